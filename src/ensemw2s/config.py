"""Typed configuration: dataclass defaults < YAML file < ``--set a.b=c`` overrides.

Every section is a dataclass; YAML keys are field names. Unknown keys, wrong types and out-of-range values
raise :class:`ConfigError` naming the key and the allowed values, before any compute starts. Steps receive
only their own section (serialised with :func:`section_to_json`) so that KFP caching reruns only what a
change affects.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ensemw2s.data import PROMPTS
from ensemw2s.errors import ConfigError


def _check_choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not allowed; allowed values: {', '.join(map(str, allowed))}")


def _check_positive(key: str, value: Any, *, zero_ok: bool = False) -> None:
    if value is None:
        return
    if (value < 0) if zero_ok else (value <= 0):
        bound = ">= 0" if zero_ok else "> 0"
        raise ConfigError(f"{key}: {value!r} is out of range; it must be {bound}")


def _check_nonempty(key: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}: must be a non-empty string, got {value!r}")


_QUANTITY_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")
_QUANTITY_UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
                   "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_K8S_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def _quantity(key: str, value: Any) -> float:
    """Bytes of a Kubernetes quantity such as ``8Gi`` or ``500M``."""
    m = _QUANTITY_RE.match(value) if isinstance(value, str) else None
    if not m:
        raise ConfigError(f"{key}: {value!r} is not a Kubernetes quantity; use a number with an optional unit "
                          "(Ki, Mi, Gi, Ti, k, M, G, T), e.g. 8Gi")
    return float(m.group(1)) * _QUANTITY_UNITS[m.group(2)]


@dataclass
class LoraConfig:
    enabled: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    # adapters on the top ``layers`` decoder layers only (peft ``layers_to_transform``); 0 = every layer. The
    # backward pass then stops at the lowest adapted layer: the cheap way to fine-tune a large student on a CPU
    layers: int = 0

    def validate(self, key: str) -> None:
        _check_positive(f"{key}.r", self.r)
        _check_positive(f"{key}.layers", self.layers, zero_ok=True)
        _check_positive(f"{key}.alpha", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{key}.dropout: {self.dropout!r} is out of range; it must be in [0, 1)")
        if not self.target_modules:
            raise ConfigError(f"{key}.target_modules: must name at least one module")


@dataclass
class TrainConfig:
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    scheduler: str = "cosine"
    max_length: int = 256
    max_steps: int = -1
    # batches of similar length (less padding); the order is still seeded
    group_by_length: bool = True

    SCHEDULERS = ("cosine", "linear", "constant")
    # a sequence is cut to max_length: the answer keeps at most half of it, the prompt is cut from the left;
    # below this the prompt keeps no more than its last few tokens and the answer a token or two
    MIN_LENGTH = 16

    def validate(self, key: str) -> None:
        _check_positive(f"{key}.epochs", self.epochs)
        _check_positive(f"{key}.batch_size", self.batch_size)
        _check_positive(f"{key}.grad_accum", self.grad_accum)
        _check_positive(f"{key}.lr", self.lr)
        _check_positive(f"{key}.weight_decay", self.weight_decay, zero_ok=True)
        if self.max_length < self.MIN_LENGTH:
            raise ConfigError(f"{key}.max_length: {self.max_length!r} is out of range; it must be >= {self.MIN_LENGTH} "
                              "(room for the end of the prompt, 'Answer:', and at least one answer token)")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"{key}.warmup_ratio: {self.warmup_ratio!r} is out of range; it must be in [0, 1)")
        _check_choice(f"{key}.scheduler", self.scheduler, self.SCHEDULERS)
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"{key}.max_steps: {self.max_steps!r} is out of range; use -1 (epochs) or > 0")


@dataclass
class DataConfig:
    """Which questions are easy (weak supervision, ID) and which are hard (pseudo-labelled, OOD)."""

    easy: str = "arc_easy"
    hard: str = "sciq"
    # how to rank rows by difficulty when easy and hard come from one dataset:
    # native (dataset labels), model_loss (weak base zero-shot loss), crossfit (k-fold error of a small
    # fine-tuned model), grade, level, column (``difficulty_column``), random (baseline)
    difficulty: str = "native"
    difficulty_column: Optional[str] = None
    jsonl_path: Optional[str] = None
    hard_jsonl_path: Optional[str] = None
    crossfit_folds: int = 2
    easy_train: int = 160
    easy_val: int = 50
    easy_test: int = 100
    hard_pool: int = 100
    hard_test: int = 100
    max_choices: int = 5
    # prompt form: "mc" = question + lettered options + "Answer:"; "rc" = question + "Answer:" only (each option
    # scored as a continuation; the form the models' zero-shot numbers in shared/MODELS_AND_DATA.md use)
    prompt: str = "mc"

    DIFFICULTY = ("native", "model_loss", "crossfit", "grade", "level", "column", "random")

    def validate(self, key: str = "data") -> None:
        from ensemw2s.assets import (
            DATASETS,  # the dataset registry; imported late to keep config import-light
        )

        for side in ("easy", "hard"):
            name = getattr(self, side)
            _check_nonempty(f"{key}.{side}", name)
            _check_choice(f"{key}.{side}", name, tuple(sorted(DATASETS)))
        _check_choice(f"{key}.difficulty", self.difficulty, self.DIFFICULTY)
        _check_choice(f"{key}.prompt", self.prompt, PROMPTS)
        if self.difficulty == "column" and not self.difficulty_column:
            raise ConfigError(f"{key}.difficulty_column: required when {key}.difficulty is 'column'")
        for side, path_key in (("easy", "jsonl_path"), ("hard", "hard_jsonl_path")):
            if getattr(self, side) == "jsonl" and not (getattr(self, path_key) or self.jsonl_path):
                raise ConfigError(f"{key}.{path_key}: required when {key}.{side} is 'jsonl'")
        for name in ("easy_train", "easy_val", "easy_test", "hard_pool", "hard_test"):
            _check_positive(f"{key}.{name}", getattr(self, name))
        _check_positive(f"{key}.max_choices", self.max_choices)
        if self.crossfit_folds < 2:
            raise ConfigError(f"{key}.crossfit_folds: {self.crossfit_folds!r} is out of range; it must be >= 2")


@dataclass
class ModelSection:
    """A model and how to fine-tune it (used for the weak experts and for the strong student)."""

    model: str = "smollm2-135m"
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    MAX_MODEL_NAME = 1024  # a registry name, a hub id, a folder or an s3:// URI: no real one is longer

    def validate(self, key: str) -> None:
        _check_nonempty(f"{key}.model", self.model)
        if len(self.model) > self.MAX_MODEL_NAME or any(ord(c) < 32 for c in self.model):
            shown = self.model[:40] + "…" if len(self.model) > 40 else self.model
            raise ConfigError(f"{key}.model: {shown!r} ({len(self.model)} characters) is not a model name; use a "
                              f"set-up model name, a hub id, a folder or an s3:// URI of at most "
                              f"{self.MAX_MODEL_NAME} characters without control characters")
        self.lora.validate(f"{key}.lora")
        self.train.validate(f"{key}.train")


@dataclass
class StudentSection(ModelSection):
    """The strong student; ``enabled: false`` drops the student stage (pseudo-labels, the three students and
    their evaluation): the run ends with the experts' evaluation, for a study of the experts alone."""

    enabled: bool = True

    HASH_OMIT_AT_DEFAULT = ("enabled",)


@dataclass
class BoostingConfig:
    rounds: int = 3
    alpha_rule: str = "prior"
    sampling: str = "resample"
    on_nonpositive_alpha: str = "skip"
    # round 1's expert is the single-expert baseline (step train_single: all easy rows, equal weights) instead
    # of an expert of its own; D_1 is uniform, so this is round 1 without resampling, and one training less
    reuse_single: bool = False
    # how D_{t+1} is made: "adaboost" (D_t · exp(alpha_t · wrong_t), EnsemW2S) or "bagging", a control that
    # isolates reweighting from averaging: D stays uniform, so each round trains on an independent uniform
    # resample of the same token budget (alphas are still measured, under D_1)
    method: str = "adaboost"
    # an expert's error on a training answer token: "token" = its teacher-forced argmax is not the gold token;
    # "answer" = its option choice on that question (option log-likelihood) is wrong, and then every answer
    # token of the question counts as wrong (eps and eps_prior alike)
    error: str = "token"

    SAMPLING = ("resample", "weighted")
    ON_NONPOSITIVE = ("skip", "stop")
    METHODS = ("adaboost", "bagging")
    ERRORS = ("token", "answer")
    HASH_OMIT_AT_DEFAULT = ("method", "error")
    # Rounds are unrolled into the pipeline at compile time (two tasks per round: 32 rounds compile to about
    # 330 KB of KFP spec, and a run's Argo Workflow object must stay under etcd's 1.5 MiB), and every ensemble
    # step loads every expert: a bound here fails in milliseconds instead of a compile that runs for minutes
    MAX_ROUNDS = 32

    def validate(self, key: str = "boosting") -> None:
        from ensemw2s.boosting import ALPHA_RULES

        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"{key}.rounds: {self.rounds!r} is out of range; it must be an integer >= 1")
        if self.rounds > self.MAX_ROUNDS:
            raise ConfigError(f"{key}.rounds: {self.rounds!r} is out of range; it must be <= {self.MAX_ROUNDS} "
                              "(each round is unrolled into two pipeline tasks at compile time, and more rounds "
                              "give a pipeline spec the KFP backend cannot store and ensembles too large to load)")
        _check_choice(f"{key}.alpha_rule", self.alpha_rule, tuple(sorted(ALPHA_RULES)))
        _check_choice(f"{key}.sampling", self.sampling, self.SAMPLING)
        _check_choice(f"{key}.on_nonpositive_alpha", self.on_nonpositive_alpha, self.ON_NONPOSITIVE)
        _check_choice(f"{key}.method", self.method, self.METHODS)
        _check_choice(f"{key}.error", self.error, self.ERRORS)
        if self.method == "bagging" and self.sampling != "resample":
            raise ConfigError(f"{key}.method: 'bagging' needs {key}.sampling 'resample' (under 'weighted' every "
                              f"round would train on the same uniformly weighted tokens); got {self.sampling!r}")


@dataclass
class EnsembleConfig:
    combine: str = "prob"
    max_new_tokens: int = 24
    batch_size: int = 16
    # how pseudo-labels are written: free generation (default) or choosing the best-scoring option
    pseudo_label_mode: str = "generate"
    # which rounds form the ensemble that labels and is evaluated: every expert with alpha > 0 ("all"), or
    # rounds 1..T with T chosen by accuracy on easy_val ("val")
    select_rounds: str = "all"
    # the single-weak-expert baseline (weak_single, the student <- single, PGR_single): "full" = the weak model
    # fine-tuned on all the labelled easy data (step train_single; Burns et al.'s weak supervisor), "round1" =
    # the round-1 boosting expert (the definition before; under boosting.sampling=resample it sees a resampled
    # subset of the answer tokens)
    single: str = "full"

    COMBINE = ("prob", "vote")
    SINGLE = ("full", "round1")
    PSEUDO_MODES = ("generate", "options")
    SELECT_ROUNDS = ("all", "val")

    def validate(self, key: str = "ensemble") -> None:
        _check_choice(f"{key}.combine", self.combine, self.COMBINE)
        _check_choice(f"{key}.pseudo_label_mode", self.pseudo_label_mode, self.PSEUDO_MODES)
        _check_choice(f"{key}.select_rounds", self.select_rounds, self.SELECT_ROUNDS)
        _check_choice(f"{key}.single", self.single, self.SINGLE)
        _check_positive(f"{key}.max_new_tokens", self.max_new_tokens)
        _check_positive(f"{key}.batch_size", self.batch_size)


@dataclass
class EvalConfig:
    max_new_tokens: int = 24
    batch_size: int = 16
    # which accuracy the headline keys (``*_acc_id``/``*_acc_ood``) report; both are always stored
    primary: str = "loglik"
    generation: bool = True

    PRIMARY = ("loglik", "generation")

    def validate(self, key: str = "eval") -> None:
        _check_choice(f"{key}.primary", self.primary, self.PRIMARY)
        _check_positive(f"{key}.max_new_tokens", self.max_new_tokens)
        _check_positive(f"{key}.batch_size", self.batch_size)
        if self.primary == "generation" and not self.generation:
            raise ConfigError(f"{key}.generation: must be true when {key}.primary is 'generation'")


def check_endpoint(key: str, value: Any) -> str:
    """An S3 endpoint URL: ``http(s)://host[:port][/path]`` (``key`` names where it came from)."""
    from urllib.parse import urlparse

    ok = isinstance(value, str) and value.startswith(("http://", "https://"))
    if ok:
        try:
            u = urlparse(value)
            ok = bool(u.hostname) and (u.port is None or 0 < u.port < 65536)
        except ValueError:
            ok = False
    if not ok:
        raise ConfigError(f"{key}: {value!r} must start with http:// or https://, followed by a host "
                          "(e.g. http://127.0.0.1:8333)")
    return value


@dataclass
class StorageConfig:
    # None: the embedded SeaweedFS server (or S3_ENDPOINT_URL when set)
    endpoint: Optional[str] = None
    bucket: str = "ensemw2s"
    region: str = "us-east-1"
    prefix: str = "runs"
    multipart_threshold_mb: int = 64
    max_attempts: int = 5

    def validate(self, key: str = "storage") -> None:
        _check_nonempty(f"{key}.bucket", self.bucket)
        if not _BUCKET_RE.fullmatch(self.bucket) or ".." in self.bucket:
            raise ConfigError(f"{key}.bucket: {self.bucket!r} is not an S3 bucket name; use 3-63 characters from "
                              "a-z 0-9 . -, starting and ending with a letter or digit")
        _check_nonempty(f"{key}.prefix", self.prefix)
        _check_positive(f"{key}.multipart_threshold_mb", self.multipart_threshold_mb)
        _check_positive(f"{key}.max_attempts", self.max_attempts)
        if self.endpoint is not None:
            check_endpoint(f"{key}.endpoint", self.endpoint)


@dataclass
class ResourcesConfig:
    """Cluster settings, applied only when the pipeline is compiled for Kubernetes."""

    image: str = "ghcr.io/ensemw2s/ensemw2s:0.1.0-cpu"
    gpu_image: str = "ghcr.io/ensemw2s/ensemw2s:0.1.0-cuda"
    accelerator_type: str = "nvidia.com/gpu"
    accelerator_limit: int = 1
    node_selector: dict = field(default_factory=dict)
    tolerations: list = field(default_factory=list)
    s3_secret_name: str = "ensemw2s-s3"
    cpu_request: str = "2"
    memory_request: str = "8Gi"
    gpu_memory_request: str = "32Gi"
    # pods fit for real clusters (docs/cluster.md, "Pods on a real cluster"): a memory limit per kind of step,
    # a scratch volume with a storage request (KFP's task API has no ephemeral-storage request; "" = none),
    # retries of GPU steps (preempted nodes), registry secrets, the run's service account ("" = KFP's default),
    # the GPU model per GPU step module (node selector ``gpu_type_label``; key "default" for the others), and
    # at most this many GPU pods of one ablation grid at once
    memory_limit: str = "12Gi"
    gpu_memory_limit: str = "48Gi"
    scratch_size: str = "10Gi"
    gpu_scratch_size: str = "50Gi"
    scratch_storage_class: str = ""
    retries: int = 2
    image_pull_secrets: list = field(default_factory=list)
    service_account: str = ""
    gpu_type_label: str = "nvidia.com/gpu.product"
    gpu_types: dict = field(default_factory=dict)
    max_gpu_pods: int = 8
    # compute precision of the model steps, locally too (not only on a cluster): auto = bfloat16 on a GPU and
    # on a CPU with native bf16 (avx512_bf16/amx_bf16), else float32 (ensemw2s.modeling.resolve_dtype)
    dtype: str = "auto"

    GPU_TYPE_KEYS = ("default", "train_expert", "pseudo_label", "train_student", "evaluate")
    MAX_RETRIES = 10
    DTYPES = ("auto", "float32", "bfloat16")  # = ensemw2s.modeling.DTYPES

    def validate(self, key: str = "resources") -> None:
        _check_nonempty(f"{key}.image", self.image)
        _check_nonempty(f"{key}.gpu_image", self.gpu_image)
        _check_positive(f"{key}.accelerator_limit", self.accelerator_limit, zero_ok=True)
        _check_nonempty(f"{key}.s3_secret_name", self.s3_secret_name)
        _check_choice(f"{key}.dtype", self.dtype, self.DTYPES)
        for kind in ("", "gpu_"):
            request = _quantity(f"{key}.{kind}memory_request", getattr(self, f"{kind}memory_request"))
            limit = _quantity(f"{key}.{kind}memory_limit", getattr(self, f"{kind}memory_limit"))
            if limit < request:
                raise ConfigError(f"{key}.{kind}memory_limit: {getattr(self, f'{kind}memory_limit')!r} is below "
                                  f"{key}.{kind}memory_request {getattr(self, f'{kind}memory_request')!r}; "
                                  "Kubernetes refuses a pod whose limit is below its request")
            size = getattr(self, f"{kind}scratch_size")
            if size != "":
                _quantity(f"{key}.{kind}scratch_size", size)
        if isinstance(self.retries, bool) or not 0 <= self.retries <= self.MAX_RETRIES:
            raise ConfigError(f"{key}.retries: {self.retries!r} is out of range; it must be in 0..{self.MAX_RETRIES}")
        for i, name in enumerate(self.image_pull_secrets):
            if not isinstance(name, str) or not _K8S_NAME_RE.fullmatch(name):
                raise ConfigError(f"{key}.image_pull_secrets[{i}]: {name!r} is not a Kubernetes Secret name "
                                  "(lowercase letters, digits, '-' and '.', at most 253 characters)")
        if self.service_account and not _K8S_NAME_RE.fullmatch(self.service_account):
            raise ConfigError(f"{key}.service_account: {self.service_account!r} is not a Kubernetes service "
                              "account name (lowercase letters, digits, '-' and '.'); use \"\" for KFP's default")
        for step, gpu in self.gpu_types.items():
            _check_choice(f"{key}.gpu_types key", step, self.GPU_TYPE_KEYS)
            _check_nonempty(f"{key}.gpu_types.{step}", gpu)
        if self.gpu_types:
            _check_nonempty(f"{key}.gpu_type_label", self.gpu_type_label)
        from ensemw2s.steps.keys import MAX_PARALLEL_GPU_STEPS

        if isinstance(self.max_gpu_pods, bool) or self.max_gpu_pods < MAX_PARALLEL_GPU_STEPS:
            raise ConfigError(f"{key}.max_gpu_pods: {self.max_gpu_pods!r} is out of range; it must be >= "
                              f"{MAX_PARALLEL_GPU_STEPS} (the most GPU pods one ablation grid may ask for at once; "
                              f"one run alone can have {MAX_PARALLEL_GPU_STEPS} GPU steps running together)")


@dataclass
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    experts: ModelSection = field(default_factory=ModelSection)
    boosting: BoostingConfig = field(default_factory=BoostingConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    student: StudentSection = field(
        default_factory=lambda: StudentSection(model="gemma3-270m", train=TrainConfig(epochs=1.0, lr=5e-4))
    )
    eval: EvalConfig = field(default_factory=EvalConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    def validate(self) -> "Config":
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed: {self.seed!r} is out of range; it must be an integer >= 0")
        self.data.validate("data")
        self.experts.validate("experts")
        self.boosting.validate("boosting")
        self.ensemble.validate("ensemble")
        self.student.validate("student")
        self.eval.validate("eval")
        self.storage.validate("storage")
        self.resources.validate("resources")
        return self


# --------------------------------------------------------------------------- building from plain data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against annotation ``tp``; ints are accepted for floats. Raise ConfigError otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping (section {_type_name(tp)}), got {type(value).__name__}")
        return from_dict(tp, value, key)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r} ({type(value).__name__})")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r} ({type(value).__name__})")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r} ({type(value).__name__})")
        return value
    if tp in (list, dict) or origin in (list, dict):
        want = origin or tp
        if not isinstance(value, want):
            raise ConfigError(f"{key}: expected a {want.__name__}, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from plain data; an unknown key names itself and the allowed keys."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise ConfigError(f"unknown config key {key!r}; allowed keys{' in ' + prefix if prefix else ''}: "
                              f"{', '.join(names)}")
        kwargs[k] = _coerce(key, v, hints[k])
    return cls(**kwargs)


def set_path(tree: dict, dotted: str, value: Any) -> None:
    """``tree["a"]["b"] = value`` for ``dotted`` = "a.b" (sections created as needed)."""
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: {p!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def parse_overrides(overrides: list[str] | None) -> dict:
    """``["boosting.rounds=3", "student.lora.enabled=false"]`` -> nested dict (values parsed as YAML)."""
    tree: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. boosting.rounds=3")
        k, v = item.split("=", 1)
        if not k.strip():
            raise ConfigError(f"--set {item!r}: empty key")
        set_path(tree, k.strip(), yaml.safe_load(v) if v.strip() else "")
    return tree


def merge_dicts(base: dict, over: dict) -> dict:
    """``over`` deep-merged onto ``base`` (sections merge, leaves replace); neither is modified."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(Exception):
    def __init__(self, key, line):
        super().__init__(key, line)
        self.key, self.line = key, line


# a config is a few hundred values; an alias bomb (anchors referring to anchors) expands to billions
YAML_MAX_VALUES = 100_000
YAML_MAX_DEPTH = 32


def _check_size(data: Any, source: str) -> None:
    """Walk what YAML built (aliases counted every time they are used), stopping at the bounds."""
    count, stack = 0, [(data, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > YAML_MAX_VALUES:
            raise ConfigError(f"{source}: the YAML expands to more than {YAML_MAX_VALUES} values (aliases "
                              "included); a config is far smaller (an alias bomb?)")
        if depth > YAML_MAX_DEPTH:
            raise ConfigError(f"{source}: the YAML is nested more than {YAML_MAX_DEPTH} levels deep")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def safe_load_yaml(text: str, source: str = "<string>") -> Any:
    """``yaml.safe_load`` with a message naming the file; Python object tags and duplicate keys are refused,
    and what it builds is bounded in size and depth."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise ConfigError(f"{source}: line {exc.line}: key {exc.key!r} is given twice in one mapping; "
                          "keep one") from None
    except yaml.YAMLError as exc:
        # one line: PyYAML's message spans several (problem, position, a caret under the column)
        raise ConfigError(f"{source}: not valid YAML (only plain YAML is accepted, no object tags): "
                          f"{' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ConfigError(f"{source}: the YAML is nested too deeply") from None
    _check_size(data, source)
    return data


DEFAULT_CONFIG = "configs/default.yaml"


def default_config_path() -> str | None:
    """``configs/default.yaml`` of the checkout we run from (the working directory, else the checkout this
    package is installed from in editable mode); None means the built-in defaults."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (base / DEFAULT_CONFIG).is_file():
            return str(base / DEFAULT_CONFIG)
    return None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults < YAML at ``path`` < ``overrides``; validated."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{p}: not a YAML text file (not valid UTF-8 at byte {exc.start})") from None
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read the config file ({exc.strerror})") from None
        if "\x00" in text:
            raise ConfigError(f"{p}: not a YAML text file (it holds NUL bytes)")
        loaded = safe_load_yaml(text, str(p))
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
        data = loaded
    data = merge_dicts(data, parse_overrides(overrides))
    return from_dict(Config, data).validate()


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def section_to_json(section: Any) -> str:
    """Stable JSON of a section: the string a pipeline step receives (and KFP's cache key sees)."""
    return json.dumps(to_dict(section), sort_keys=True)


def section_from_json(cls: type, text: str, key: str) -> Any:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{key}: not valid JSON: {exc}") from None
    obj = from_dict(cls, data, key)
    if hasattr(obj, "validate"):
        obj.validate(key)
    return obj


def _hashed(obj: Any) -> Any:
    """``dataclasses.asdict`` at every level, less the settings added after runs were stored
    (``HASH_OMIT_AT_DEFAULT``) where they have their default value: so resuming or forking (--from-run) an older
    run still reuses its steps, and its run id (benchmarks/science) stays the same."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        omit = getattr(obj, "HASH_OMIT_AT_DEFAULT", ())
        return {f.name: _hashed(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.name in omit and getattr(obj, f.name) == f.default)}
    if isinstance(obj, (list, tuple)):
        return [_hashed(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _hashed(v) for k, v in obj.items()}
    return obj


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _hashed(obj)
    raise TypeError(f"cannot hash a {type(obj).__name__} in a config")


def config_hash(obj: Any) -> str:
    """Short hash of a config, a section, or a dict of them; recorded in artifact manifests."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_plain).encode()).hexdigest()[:16]


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
