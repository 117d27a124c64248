"""``ensemw2s rerun-step``: run one step of a stored run again, locally or in Docker, from that run's artifacts
in object storage; outputs go to ``runs/<run_id>/<step>.attempt-<n>/`` (the original is never touched) and the
step's summary is diffed against the original.

The steps and their flags come from the one table of step keys (:func:`ensemw2s.steps.keys.run_steps`), which
also says which steps are GPU steps: ``--docker`` runs those as the cluster does, in ``resources.gpu_image``
with ``--gpus all`` (the others in ``resources.image``). Credentials reach ``docker run`` by variable NAME only
(docker copies the values from its own environment).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from ensemw2s import provenance
from ensemw2s.config import StorageConfig, dump_yaml, from_dict, merge_dicts, parse_overrides, safe_load_yaml
from ensemw2s.errors import ClusterError, ConfigError
from ensemw2s.steps import keys
from ensemw2s.steps.keys import StepRun

# environment a step container needs, passed to `docker run` by NAME (values never on the command line)
DOCKER_ENV_NAMES = ("S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                    "AWS_DEFAULT_REGION")


def step_command(spec: StepRun, *, config_path: Path, run_id: str, workdir: Path,
                 python: str = sys.executable) -> list[str]:
    """``python -m ensemw2s.steps.<module> ...`` for one step alone. Its inputs are given as paths that do not
    exist, so the step fetches them from the original run in object storage; outputs go under ``workdir``."""
    flags = [str(a) for a in spec.fixed]
    for flag, producer, output in spec.inputs:
        flags += [flag, str(workdir / "in" / producer / output)]
    for flag, output, _summary in spec.outputs:
        flags += [flag, str(workdir / "out" / output)]
    return [python, "-m", f"ensemw2s.steps.{spec.module}", "--config", str(config_path), "--run-id", run_id,
            *flags]


def docker_command(image: str, step_argv: list[str], *, workdir: Path, attempt: int,
                   assets_home: Optional[Path] = None, user: Optional[str] = None, gpus: bool = False) -> list[str]:
    """``docker run`` for one step. Credentials are passed by variable NAME (docker copies the values from its
    own environment); only non-secret values appear on the command line. The work dir and the asset cache are
    mounted at the same paths as here, so paths recorded in the run (e.g. expert folders) resolve the same.
    ``gpus``: a GPU step, given every GPU of this machine (``--gpus all``, the NVIDIA container toolkit)."""
    cmd = ["docker", "run", "--rm", "--network", "host"]
    if gpus:
        cmd += ["--gpus", "all"]
    if user:
        cmd += ["--user", user]
    for name in DOCKER_ENV_NAMES:
        cmd += ["-e", name]
    cmd += ["-e", f"ENSEMW2S_ATTEMPT={int(attempt)}", "-e", f"HOME={workdir}", "-v", f"{workdir}:{workdir}"]
    if assets_home is not None:
        cmd += ["-e", f"ENSEMW2S_HOME={assets_home}", "-v", f"{assets_home}:{assets_home}"]
    return cmd + [image, "python", *step_argv[1:]]


def step_image(cfg, spec: StepRun) -> str:
    """The image a step runs in on the cluster (and in ``--docker``): the CUDA image for GPU steps."""
    return cfg.resources.gpu_image if spec.gpu else cfg.resources.image


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
    data = merge_dicts(data, parse_overrides(overrides).get("storage") or {})
    st = from_dict(StorageConfig, data, "storage")
    st.validate("storage")
    return st


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
    from ensemw2s.storage import Store, storage_env, validate_name

    overrides = list(overrides or [])
    validate_name("run id", run_id)
    if not step or ".." in step or "/" in step or re.search(r"[\x00-\x1f\x7f]", step):
        raise ConfigError(f"--step {step!r}: not a step name (no '/', '..' or control characters)")
    st_cfg = _locate_storage(config, overrides)
    storage_env(st_cfg)  # the embedded server (started if needed) or S3_ENDPOINT_URL
    store = Store.from_config(st_cfg)
    store.check(create=False)
    cfg = provenance.stored_config(store, run_id, overrides)
    specs = keys.run_steps(cfg.boosting.rounds, keys.students_enabled(cfg))
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
        image = step_image(cfg, spec)
        if docker:
            user = f"{os.getuid()}:{os.getgid()}" if hasattr(os, "getuid") else None
            argv = docker_command(image, argv, workdir=workdir, attempt=attempt,
                                  assets_home=assets.home().resolve(), user=user, gpus=spec.gpu)
        where = (f"docker image {image}" + (" with --gpus all" if spec.gpu else "")) if docker else "a local subprocess"
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
        for _flag, output, name in spec.outputs:
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
