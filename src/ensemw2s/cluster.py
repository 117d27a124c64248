"""The cluster path: submit or schedule the pipeline on Kubeflow Pipelines; rerun one step of a stored run.

- :func:`submit`: compile (with the Kubernetes plumbing) and create one KFP run, parameter ``run_id``.
- :func:`schedule`: a KFP recurring run (6-field cron, seconds first); an existing recurring run of the same
  name in the experiment is replaced, so repeated ``helm upgrade`` hooks do not pile up schedules.
- :func:`rerun_step`: run one step of a past run again, locally or in Docker, from that run's artifacts in
  object storage; outputs go to ``runs/<run_id>/<step>.attempt-<n>/`` and a metric diff is printed.

No secret ever enters a pipeline parameter or a command line: pods get S3 credentials from the Kubernetes
Secret (``pipelines/k8s.py``), and ``docker run`` receives them by variable name only. kfp is imported lazily
(only these commands need it).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional

from ensemw2s.config import (
    Config,
    ConfigError,
    StorageConfig,
    _from_dict,
    _merge,
    config_hash,
    dump_yaml,
    load_config,
    parse_overrides,
    safe_load_yaml,
)

PIPELINES = ("main", "ablations")
DEFAULT_EXPERIMENT = {"main": "ensemw2s", "ablations": "ensemw2s-ablations"}
CRON_FIELDS = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")
_CRON_FIELD_RE = re.compile(r"^[0-9A-Za-z*?/,\-LW#]+$")
# environment a step container needs, passed to `docker run` by NAME (values never on the command line)
DOCKER_ENV_NAMES = ("S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                    "AWS_DEFAULT_REGION")


class ClusterError(RuntimeError):
    """A problem with the KFP server, Docker or a stored run, in one line (the CLI exits 1)."""


# --------------------------------------------------------------------------- CLI glue (used by ensemw2s.cli)


def add_cluster_args(p) -> None:
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://ml-pipeline.kubeflow:8888")
    p.add_argument("--pipeline", default="main", choices=PIPELINES)
    p.add_argument("--experiment", default=None, help="KFP experiment (created if missing; default: "
                   + ", ".join(f"{k}: {v}" for k, v in DEFAULT_EXPERIMENT.items()) + ")")
    p.add_argument("--namespace", default=None, help="Kubernetes namespace (multi-user Kubeflow)")


def cli_call(fn: Callable, **kwargs) -> int:
    """Run a command; a ClusterError prints one line and exits 1 (ConfigError is the CLI's: exit 2)."""
    try:
        fn(**kwargs)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- cron


def validate_cron(expr: str) -> str:
    """KFP recurring runs use the 6-field robfig/cron format, seconds first; a 5-field crontab line is the
    most common mistake, so it gets the corrected expression in the message."""
    fields = str(expr or "").split()
    if len(fields) == 5:
        fixed = "0 " + " ".join(fields)
        raise ConfigError(f"--cron {expr!r} has 5 fields, but KFP needs 6 fields (seconds first: "
                          f"{' '.join(CRON_FIELDS)}); for the same schedule use --cron \"{fixed}\"")
    if len(fields) != 6:
        raise ConfigError(f"--cron {expr!r} has {len(fields)} fields, but KFP needs 6 fields "
                          f"({' '.join(CRON_FIELDS)}), e.g. \"0 0 3 * * *\" for 03:00 every day")
    for name, value in zip(CRON_FIELDS, fields, strict=True):
        if not _CRON_FIELD_RE.match(value):
            raise ConfigError(f"--cron {expr!r}: the {name} field {value!r} is not a cron field")
    return " ".join(fields)


# --------------------------------------------------------------------------- compile


@dataclass
class Target:
    """What is submitted: the main config, or an ablation (base config + grid)."""

    pipeline: str
    cfg: Config  # the main config, or the ablation's base
    ablation: object = None  # ensemw2s.steps.compare.Ablation for pipeline "ablations"
    extra: dict = field(default_factory=dict)


def load_target(pipeline: str, config: Optional[str], overrides: Optional[list[str]] = None) -> Target:
    if pipeline not in PIPELINES:
        raise ConfigError(f"--pipeline {pipeline!r} is not allowed; allowed values: {', '.join(PIPELINES)}")
    if pipeline == "ablations":
        from ensemw2s.steps.compare import load_ablation

        if not config:
            raise ConfigError("--pipeline ablations needs --config (an ablation config, e.g. "
                              "configs/ablations.yaml)")
        ab = load_ablation(config, overrides)
        return Target(pipeline, ab.base, ab)
    from ensemw2s.cli import _default_config

    return Target(pipeline, load_config(config or _default_config(), overrides))


def compile_target(target: Target, path: Path, *, recurring: bool = False, prefix: str = "ensemw2s") -> Path:
    """KFP IR YAML with the Kubernetes plumbing; ``recurring``: a new run id per firing."""
    from kfp import compiler
    from pipelines import ablations
    from pipelines.ensemw2s import compile_pipeline

    if target.pipeline == "ablations":
        return ablations.compile_ablations(target.ablation, path, for_cluster=True)
    if recurring:
        pipeline = ablations.build_recurring_main(target.cfg, prefix=prefix)
        compiler.Compiler().compile(pipeline, package_path=str(path))
        return Path(path)
    return compile_pipeline(target.cfg, path, for_cluster=True)


def _new_run_id(target: Target) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    what = target.ablation.plan() if target.ablation is not None else target.cfg
    prefix = "ablation-" if target.pipeline == "ablations" else ""
    return f"{prefix}{stamp}-{config_hash(what)[:6]}"


# --------------------------------------------------------------------------- KFP client


def make_client(host: str, namespace: Optional[str] = None):
    """``kfp.Client`` for ``host``; in a pod with a projected KFP token (``KF_PIPELINES_SA_TOKEN_PATH``, as
    the Helm chart mounts it) the token authenticates the requests."""
    if not host:
        raise ConfigError("--host is required (the KFP API endpoint, e.g. http://ml-pipeline.kubeflow:8888)")
    import kfp

    kwargs: dict = {"host": host}
    if namespace:
        kwargs["namespace"] = namespace
    token_path = os.environ.get("KF_PIPELINES_SA_TOKEN_PATH")
    if token_path and Path(token_path).is_file():
        from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

        kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(token_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            return kfp.Client(**kwargs)
        except Exception as exc:  # noqa: BLE001 - connection problems come in many types: one line each
            raise ClusterError(f"cannot reach the KFP API at {host}: {_short(exc)}") from None


def _short(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status:
        return f"HTTP {status} {reason or ''}".strip()
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def _api(what: str, fn: Callable, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ClusterError:
        raise
    except Exception as exc:  # noqa: BLE001
        if type(exc).__module__.startswith(("kfp_server_api", "urllib3")):
            raise ClusterError(f"KFP API call failed ({what}): {_short(exc)}") from None
        raise


def _ui_url(host: str, kind: str, ident: str) -> str:
    return f"{host.rstrip('/')}/#/{kind}/details/{ident}"


# --------------------------------------------------------------------------- submit


def submit(host: str, config: Optional[str], overrides: Optional[list[str]] = None, *, pipeline: str = "main",
           experiment: Optional[str] = None, run_name: Optional[str] = None, run_id: Optional[str] = None,
           namespace: Optional[str] = None, client=None, out=print) -> dict:
    """Compile for the cluster and create one KFP run; returns ids and the UI link."""
    from ensemw2s.storage import validate_name

    target = load_target(pipeline, config, overrides)
    run_id = validate_name("run id", run_id) if run_id else _new_run_id(target)
    if target.ablation is not None:
        from ensemw2s.steps.compare import child_runs

        children = child_runs(target.ablation.plan(), run_id)  # validates every child run id now
        if not target.ablation.grid:
            out("note: the ablation config has no 'grid:'; submitting a single grid point (base config) over "
                f"seeds {target.ablation.seeds}")
    experiment = experiment or DEFAULT_EXPERIMENT[pipeline]
    run_name = run_name or f"ensemw2s {pipeline} {run_id}"
    with tempfile.TemporaryDirectory(prefix="ensemw2s-submit-") as tmp:
        package = compile_target(target, Path(tmp) / "pipeline.yaml")
        client = client or make_client(host, namespace)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            result = _api("create run", client.create_run_from_pipeline_package, str(package),
                          arguments={"run_id": run_id}, run_name=run_name, experiment_name=experiment,
                          namespace=namespace)
    kfp_run_id = result.run_id
    info = {"run_id": run_id, "kfp_run_id": kfp_run_id, "experiment": experiment, "pipeline": pipeline,
            "url": _ui_url(host, "runs", kfp_run_id)}
    if target.ablation is None:
        info["config_stored"] = _store_config(target.cfg, run_id, out)
        out(f"submitted run {run_id} (KFP run {kfp_run_id}) to experiment {experiment!r}: "
            f"{target.cfg.boosting.rounds} boosting rounds")
    else:
        info["children"] = [c["run_id"] for c in children]
        out(f"submitted ablation {run_id} (KFP run {kfp_run_id}) to experiment {experiment!r}: "
            f"{len(target.ablation.points)} grid points x {len(target.ablation.seeds)} seeds = "
            f"{len(children)} runs; comparison table at runs/{run_id}/compare/")
    out(f"KFP UI: {info['url']}")
    out(f"artifacts: s3://{target.cfg.storage.bucket}/{target.cfg.storage.prefix}/{run_id}/")
    return info


def _store_config(cfg: Config, run_id: str, out) -> bool:
    """Best effort: ``runs/<run_id>/run-summary/config.json``, which ``rerun-step`` needs. Only when an object
    store is configured here (the cluster's, not a laptop's embedded one)."""
    from ensemw2s.config import to_dict
    from ensemw2s.storage import StorageError, Store

    if not (cfg.storage.endpoint or os.environ.get("S3_ENDPOINT_URL")):
        out(f"note: no S3 endpoint here (S3_ENDPOINT_URL), so runs/{run_id}/run-summary/config.json was not "
            "stored; `ensemw2s rerun-step` on this run needs it")
        return False
    try:
        store = Store.from_config(cfg.storage)
        store.check()
        store.put_json(run_id, "run-summary", "config.json", to_dict(cfg))
        return True
    except StorageError as exc:
        out(f"warning: could not store the run's config for rerun-step: {exc}")
        return False


# --------------------------------------------------------------------------- schedule


def schedule(host: str, cron: str, config: Optional[str], overrides: Optional[list[str]] = None, *,
             pipeline: str = "main", experiment: Optional[str] = None, name: Optional[str] = None,
             namespace: Optional[str] = None, client=None, out=print) -> dict:
    """Create (or replace) the recurring run ``name`` in ``experiment``; every firing gets a fresh run id."""
    cron = validate_cron(cron)  # before anything else: a bad cron must not reach the server
    target = load_target(pipeline, config, overrides)
    experiment = experiment or DEFAULT_EXPERIMENT[pipeline]
    name = name or experiment
    if not name.strip():
        raise ConfigError("--name must not be empty")
    with tempfile.TemporaryDirectory(prefix="ensemw2s-schedule-") as tmp:
        package = compile_target(target, Path(tmp) / "pipeline.yaml", recurring=True)
        client = client or make_client(host, namespace)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            exp = _api("create experiment", client.create_experiment, name=experiment, namespace=namespace)
            old = _recurring_runs_named(client, exp.experiment_id, name)
            created = _api("create recurring run", client.create_recurring_run,
                           experiment_id=exp.experiment_id, job_name=name,
                           description=f"ensemw2s {pipeline}, cron {cron}", cron_expression=cron,
                           max_concurrency=1, no_catchup=True, params={"run_id": ""},
                           pipeline_package_path=str(package), enabled=True)
            for rr in old:
                _api("delete recurring run", client.delete_recurring_run, rr)
    info = {"recurring_run_id": created.recurring_run_id, "name": name, "experiment": experiment,
            "cron": cron, "replaced": old, "url": _ui_url(host, "recurringrun", created.recurring_run_id)}
    what = f"replaced {len(old)} earlier one(s)" if old else "new"
    out(f"scheduled {pipeline} as recurring run {name!r} ({created.recurring_run_id}, {what}) in experiment "
        f"{experiment!r}, cron {cron!r} (second minute hour day month weekday)")
    out(f"KFP UI: {info['url']}")
    return info


def _recurring_runs_named(client, experiment_id: str, name: str) -> list[str]:
    flt = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    ids, token = [], ""
    while True:
        resp = _api("list recurring runs", client.list_recurring_runs, page_token=token, page_size=100,
                    experiment_id=experiment_id, filter=flt)
        # the server filters by name; checked again here in case an older server ignores the filter
        ids += [r.recurring_run_id for r in (resp.recurring_runs or []) if r.display_name == name]
        token = resp.next_page_token or ""
        if not token:
            return ids


# --------------------------------------------------------------------------- rerun-step


@dataclass(frozen=True)
class StepSpec:
    module: str  # ensemw2s.steps.<module>
    args: Callable[[Path, Path], list]  # (inputs dir, outputs dir) -> step flags
    outputs: dict  # output name -> summary JSON file inside it


def step_specs(cfg: Config) -> dict[str, StepSpec]:
    """Every step key of a run (as stored under ``runs/<run_id>/``) -> how to run it alone. Inputs are given
    as paths that do not exist, so the step fetches them from the original run in object storage."""
    from ensemw2s.steps.pseudo_label import SOURCES

    T = cfg.boosting.rounds
    specs: dict[str, StepSpec] = {
        "split_data": StepSpec("split_data", lambda i, o: ["--splits", o / "splits", "--state", o / "state"],
                               {"splits": "split.json", "state": "state.json"})}
    for t in range(1, T + 1):
        specs[f"train_expert-r{t}"] = StepSpec(
            "train_expert", lambda i, o, t=t: ["--round", t, "--splits", i / "splits", "--state", i / "state",
                                               "--expert", o / "expert"], {"expert": "expert.json"})
        specs[f"update_weights-r{t}"] = StepSpec(
            "update_weights", lambda i, o, t=t: ["--round", t, "--state", i / "state",
                                                 "--expert", i / "expert", "--out-state", o / "state"],
            {"state": "state.json"})
    for s in SOURCES:
        specs[f"pseudo_label-{s}"] = StepSpec(
            "pseudo_label", lambda i, o, s=s: ["--source", s, "--splits", i / "splits", "--state",
                                               i / "state", "--rounds", T, "--labels", o / "labels"],
            {"labels": "labels.json"})
        specs[f"train_student-{s}"] = StepSpec(
            "train_student", lambda i, o, s=s: ["--source", s, "--labels", i / "labels",
                                                "--student", o / "student"],
            {"student": "student.json"})
    specs["evaluate-experts"] = StepSpec(
        "evaluate", lambda i, o: ["--target", "experts", "--splits", i / "splits", "--state", i / "state",
                                  "--out", o / "eval"], {"eval": "eval.json"})
    for s in SOURCES:
        specs[f"evaluate-student-{s}"] = StepSpec(
            "evaluate", lambda i, o, s=s: ["--target", f"student-{s}", "--splits", i / "splits",
                                           "--student", i / "student", "--out", o / "eval"],
            {"eval": "eval.json"})
    specs["report"] = StepSpec(
        "report", lambda i, o: ["--eval-experts", i / "eval-experts", "--eval-student-single",
                                i / "eval-single", "--eval-student-ensemble", i / "eval-ensemble",
                                "--eval-student-gold", i / "eval-gold", "--out", o / "report"],
        {"report": "metrics.json"})
    return specs


def step_command(spec: StepSpec, *, config_path: Path, run_id: str, workdir: Path,
                 python: str = sys.executable) -> list[str]:
    flags = [str(a) for a in spec.args(workdir / "in", workdir / "out")]
    return [python, "-m", f"ensemw2s.steps.{spec.module}", "--config", str(config_path), "--run-id", run_id,
            *flags]


def docker_command(image: str, step_argv: list[str], *, workdir: Path, attempt: int,
                   assets_home: Optional[Path] = None, user: Optional[str] = None) -> list[str]:
    """``docker run`` for one step. Credentials are passed by variable NAME (docker copies the values from its
    own environment); only non-secret values appear on the command line. The work dir and the asset cache are
    mounted at the same paths as here, so paths recorded in the run (e.g. expert folders) resolve the same."""
    cmd = ["docker", "run", "--rm", "--network", "host"]
    if user:
        cmd += ["--user", user]
    for name in DOCKER_ENV_NAMES:
        cmd += ["-e", name]
    cmd += ["-e", f"ENSEMW2S_ATTEMPT={int(attempt)}", "-e", f"HOME={workdir}", "-v", f"{workdir}:{workdir}"]
    if assets_home is not None:
        cmd += ["-e", f"ENSEMW2S_HOME={assets_home}", "-v", f"{assets_home}:{assets_home}"]
    return cmd + [image, "python", *step_argv[1:]]


def docker_available() -> tuple[bool, str]:
    if not shutil.which("docker"):
        return False, "the docker command is not installed"
    try:
        res = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                             text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"`docker info` failed ({type(exc).__name__})"
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        return False, f"`docker info` failed: {last[:200]}"
    return True, res.stdout.strip()


def _locate_storage(config: Optional[str], overrides: list[str]) -> StorageConfig:
    """Where the run lives: the storage section of --config (if any) with --set storage.* on top."""
    data: dict = {}
    if config:
        p = Path(config)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        loaded = safe_load_yaml(p.read_text(encoding="utf-8"), str(p)) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
        data = loaded.get("storage") or (loaded.get("base") or {}).get("storage") or {}
    data = _merge(data, parse_overrides(overrides).get("storage") or {})
    st = _from_dict(StorageConfig, data, "storage")
    st.validate("storage")
    return st


def stored_config(store, run_id: str, overrides: Optional[list[str]] = None) -> Config:
    """The config a run was started with (``runs/<run_id>/run-summary/config.json``) with ``overrides``."""
    from ensemw2s.storage import MissingObjectError

    try:
        data = store.get_json(run_id, "run-summary", "config.json")
    except MissingObjectError:
        where = store.uri(run_id, "run-summary", "config.json")
        raise ClusterError(f"run {run_id!r} has no stored config ({where}, {store.endpoint}): is the run id "
                           "right, and was it started by `ensemw2s run` or `ensemw2s submit`?") from None
    if not isinstance(data, dict):
        raise ClusterError(f"{store.uri(run_id, 'run-summary', 'config.json')} is not a config mapping")
    return _from_dict(Config, _merge(data, parse_overrides(overrides))).validate()


def next_attempt(store, run_id: str, step: str) -> int:
    pat = re.compile(rf"^{re.escape(step)}\.attempt-(\d+)$")
    used = [int(m.group(1)) for s in store.list_steps(run_id) if (m := pat.match(s))]
    return max(used, default=0) + 1


def _flatten(obj, prefix: str = "") -> dict:
    out: dict = {}
    if isinstance(obj, dict):
        for k in sorted(obj):
            out.update(_flatten(obj[k], f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list) and any(isinstance(x, (dict, list)) for x in obj):
        for i, x in enumerate(obj):
            out.update(_flatten(x, f"{prefix}.{i}"))
    else:
        out[prefix] = obj
    return out


def _show(v) -> str:
    if v is _ABSENT:
        return "(absent)"
    if isinstance(v, float):
        return f"{v:.6g}"
    text = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return text if len(text) <= 80 else text[:77] + "..."


_ABSENT = object()


def diff_summaries(old: Optional[dict], new: Optional[dict]) -> tuple[list[str], int]:
    """``key: old -> new`` for every changed leaf; and how many leaves are unchanged."""
    a, b = _flatten(old or {}), _flatten(new or {})
    lines, same = [], 0
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, _ABSENT), b.get(k, _ABSENT)
        if va == vb:
            same += 1
        else:
            lines.append(f"{k}: {_show(va)} -> {_show(vb)}")
    return lines, same


def _summary_json(store, run_id: str, step: str, output: str, name: str, tmp: Path) -> Optional[dict]:
    from ensemw2s.storage import StorageError

    dest = tmp / f"{step}-{output}-{name}"
    try:
        store.get_file(run_id, step, f"{output}/files/{name}", dest)
    except StorageError:
        return None
    return json.loads(dest.read_text())


def rerun_step(run_id: str, step: str, overrides: Optional[list[str]] = None, *, docker: bool = False,
               attempt: Optional[int] = None, config: Optional[str] = None, keep: bool = False,
               out=print) -> dict:
    """Run step ``step`` of run ``run_id`` again (see the module docstring); returns the attempt, diffs."""
    from ensemw2s import assets
    from ensemw2s.cli import storage_env
    from ensemw2s.storage import Store, validate_name

    overrides = list(overrides or [])
    validate_name("run id", run_id)
    if not step or ".." in step or "/" in step or re.search(r"[\x00-\x1f\x7f]", step):
        raise ConfigError(f"--step {step!r}: not a step name (no '/', '..' or control characters)")
    st_cfg = _locate_storage(config, overrides)
    storage_env(SimpleNamespace(storage=st_cfg))  # the embedded server (started if needed) or S3_ENDPOINT_URL
    store = Store.from_config(st_cfg)
    store.check(create=False)
    cfg = stored_config(store, run_id, overrides)
    specs = step_specs(cfg)
    if step not in specs:
        raise ConfigError(f"--step {step!r} is not a step of run {run_id}; valid steps: {', '.join(specs)}")
    validate_name("step", step)
    spec = specs[step]
    if attempt is None:
        attempt = next_attempt(store, run_id, step)
    elif attempt < 1:
        raise ConfigError(f"--attempt {attempt}: must be >= 1")
    elif f"{step}.attempt-{attempt}" in store.list_steps(run_id):
        raise ClusterError(f"attempt {attempt} of {step} already exists in run {run_id}; omit --attempt to "
                           f"use the next free one ({next_attempt(store, run_id, step)})")
    attempt_step = f"{step}.attempt-{attempt}"
    if docker:
        ok, why = docker_available()
        if not ok:
            raise ClusterError(f"--docker: no Docker engine is reachable here ({why}); start Docker, or "
                               "rerun without --docker to run the step in a local subprocess")
    workdir = Path(tempfile.mkdtemp(prefix="ensemw2s-rerun-")).resolve()
    try:
        cfg_path = workdir / "config.yaml"
        cfg_path.write_text(dump_yaml(cfg))
        argv = step_command(spec, config_path=cfg_path, run_id=run_id, workdir=workdir)
        env = {**os.environ, "ENSEMW2S_ATTEMPT": str(attempt)}
        if docker:
            user = f"{os.getuid()}:{os.getgid()}" if hasattr(os, "getuid") else None
            argv = docker_command(cfg.resources.image, argv, workdir=workdir, attempt=attempt,
                                  assets_home=assets.home().resolve(), user=user)
        where = f"docker image {cfg.resources.image}" if docker else "a local subprocess"
        out(f"rerun {step} of run {run_id} as attempt {attempt} in {where}"
            + (f" with {' '.join(overrides)}" if overrides else ""))
        out("$ " + " ".join(argv))
        sys.stdout.flush()
        rc = subprocess.run(argv, env=env, check=False).returncode
        if rc != 0:
            raise ClusterError(f"{step} (attempt {attempt}) failed with exit code {rc}; its log is above")
        diffs = {}
        tmp = workdir / "diff"
        tmp.mkdir()
        for output, name in spec.outputs.items():
            old = _summary_json(store, run_id, step, output, name, tmp)
            new = _summary_json(store, run_id, attempt_step, output, name, tmp)
            lines, same = diff_summaries(old, new)
            diffs[f"{output}/{name}"] = lines
            label = "" if old is not None else " (the original run has no such output)"
            out(f"\n{output}/{name}: original -> attempt {attempt}{label}")
            for line in lines:
                out(f"  {line}")
            out(f"  ({same} keys unchanged)" if lines else f"  no change ({same} keys)")
        out(f"\noutputs: {store.uri(run_id, attempt_step)}/ (original untouched: {store.uri(run_id, step)}/)")
        return {"attempt": attempt, "step": attempt_step, "diffs": diffs,
                "uri": store.uri(run_id, attempt_step)}
    finally:
        if keep:
            out(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
