"""The cluster path: compile for Kubernetes, then submit one run or schedule a recurring run on Kubeflow
Pipelines.

- :func:`submit`: compile (with the Kubernetes plumbing) and create one KFP run, parameter ``run_id``.
- :func:`schedule`: a KFP recurring run (6-field cron, seconds first); an existing recurring run of the same
  name in the experiment is replaced, so repeated ``helm upgrade`` hooks do not pile up schedules.

No secret ever enters a pipeline parameter or a command line: pods get S3 credentials from the Kubernetes
Secret (``pipelines/k8s.py``). Orchestration layer: this module reaches up to ``pipelines/`` (kfp, imported
lazily: only these commands need it); the core never imports it. Single-step reruns are in
:mod:`ensemw2s.rerun`.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ensemw2s import provenance
from ensemw2s.config import Config, default_config_path, load_config
from ensemw2s.errors import ClusterError, ConfigError

PIPELINES = ("main", "ablations")
DEFAULT_EXPERIMENT = {"main": "ensemw2s", "ablations": "ensemw2s-ablations"}
# The oldest KFP backend that runs what we compile: kfp-kubernetes 2.15+ writes the secret-as-env fields
# ``optional`` and ``secretNameParameter`` into the platform spec, and a KFP driver older than 2.15.0 stops every
# step with "unknown field ..." (docs/cluster.md, "KFP backend version", has the sources).
MIN_KFP_VERSION = (2, 15, 0)
CRON_FIELDS = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")
_CRON_FIELD_RE = re.compile(r"^[0-9A-Za-z*?/,\-LW#]+$")


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
    ablation: object = None  # ensemw2s.ablation.Ablation for pipeline "ablations"
    extra: dict = field(default_factory=dict)


def load_target(pipeline: str, config: Optional[str], overrides: Optional[list[str]] = None) -> Target:
    if pipeline not in PIPELINES:
        raise ConfigError(f"--pipeline {pipeline!r} is not allowed; allowed values: {', '.join(PIPELINES)}")
    if pipeline == "ablations":
        from ensemw2s.ablation import load_ablation

        if not config:
            raise ConfigError("--pipeline ablations needs --config (an ablation config, e.g. "
                              "configs/ablations.yaml)")
        ab = load_ablation(config, overrides)
        return Target(pipeline, ab.base, ab)
    return Target(pipeline, load_config(config or default_config_path(), overrides))


def compile_target(target: Target, path: Path, *, recurring: bool = False, prefix: str = "ensemw2s",
                   cache: bool = False) -> Path:
    """KFP IR YAML with the Kubernetes plumbing; ``recurring``: a new run id per firing; ``cache``: KFP's cache
    option of every step task (the run-opening and -closing tasks are never cached). Refused (ConfigError)
    above the spec size limit of ``pipelines/limits.py``."""
    from pipelines import ablations
    from pipelines.ensemw2s import compile_pipeline

    if target.pipeline == "ablations":
        return ablations.compile_ablations(target.ablation, path, for_cluster=True, cache=cache)
    if recurring:
        return ablations.compile_recurring_main(target.cfg, path, prefix=prefix)
    return compile_pipeline(target.cfg, path, for_cluster=True, cache=cache)


def _new_run_id(target: Target) -> str:
    if target.ablation is not None:
        return provenance.new_run_id(target.ablation.plan(), prefix="ablation-")
    return provenance.new_run_id(target.cfg)


# --------------------------------------------------------------------------- KFP client


def make_client(host: str, namespace: Optional[str] = None):
    """``kfp.Client`` for ``host``; in a pod with a projected KFP token (``KF_PIPELINES_SA_TOKEN_PATH``, as
    the Helm chart mounts it) the token authenticates the requests."""
    if not host:
        raise ConfigError("--host is required (the KFP API endpoint, e.g. http://ml-pipeline.kubeflow:8888)")
    probe_kfp_api(host)
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


def probe_kfp_api(host: str, timeout: float = 5.0) -> dict:
    """One ``GET <host>/apis/v2beta1/healthz`` (no authentication needed) before kfp.Client is made: kfp.Client
    retries its own health check for about 25 s and logs a traceback per try when the host is not a KFP API."""
    import urllib.error
    import urllib.request
    from urllib.parse import urlparse

    try:
        u = urlparse(host)
        ok = u.scheme in ("http", "https") and bool(u.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"--host {host!r}: expected an http:// or https:// URL of the KFP API, "
                          "e.g. http://ml-pipeline.kubeflow:8888")
    url = host.rstrip("/") + "/apis/v2beta1/healthz"
    handlers = [urllib.request.ProxyHandler({})] if u.hostname in ("127.0.0.1", "localhost", "::1") else []
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=timeout) as resp:
            status, kind, body = resp.status, resp.headers.get("Content-Type", ""), resp.read(65536)
    except urllib.error.HTTPError as exc:
        status, kind, body = exc.code, exc.headers.get("Content-Type", "") if exc.headers else "", b""
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ClusterError(f"cannot reach the KFP API at {host}: {reason}") from None
    try:
        data = json.loads(body) if status == 200 else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ClusterError(f"--host {host} is not a KFP API: GET {url} answered HTTP {status} "
                           f"({kind or 'no content type'}), not KFP's health record; use the API endpoint, e.g. "
                           "http://ml-pipeline.kubeflow:8888")
    return data


def _short(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status:
        return f"HTTP {status} {reason or ''}".strip()
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def _api(what: str, fn: Callable, *args, **kwargs):
    try:
        # kfp.Client prints "Run details: <API host>/#/runs/..." links built from the API host, which serves no
        # UI; this module prints its own (see ui_base)
        with contextlib.redirect_stdout(io.StringIO()):
            return fn(*args, **kwargs)
    except ClusterError:
        raise
    except Exception as exc:  # noqa: BLE001
        if type(exc).__module__.startswith(("kfp_server_api", "urllib3")):
            raise ClusterError(f"KFP API call failed ({what}): {_short(exc)}") from None
        raise


def ui_base(host: str, ui_url: Optional[str] = None) -> Optional[str]:
    """Base URL of the KFP UI: ``ui_url`` (``--ui-url``), else ``$KF_PIPELINES_UI_ENDPOINT`` (kfp.Client's own
    setting), else the host when it is Kubeflow's ``.../pipeline`` endpoint (the UI's proxy, which serves both
    the API and the UI); None when unknown: the API server (``ml-pipeline:8888``) serves no UI."""
    base = ui_url or os.environ.get("KF_PIPELINES_UI_ENDPOINT")
    if not base and host.rstrip("/").endswith("/pipeline"):
        base = host
    return base.rstrip("/") if base else None


def _ui_url(host: str, kind: str, ident: str, ui_url: Optional[str] = None) -> Optional[str]:
    base = ui_base(host, ui_url)
    return f"{base}/#/{kind}/details/{ident}" if base else None


def _say_ui(out, url: Optional[str], what: str) -> None:
    if url:
        out(f"KFP UI: {url}")
    else:
        out(f"KFP UI: no link (the API host serves no UI); {what}. Pass --ui-url or set KF_PIPELINES_UI_ENDPOINT "
            "to the UI's address, e.g. http://localhost:8080 after "
            "`kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80`")


def parse_version(tag: str) -> Optional[tuple]:
    m = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", str(tag or "").strip())
    return tuple(int(x) for x in m.groups()) if m else None


def server_info(client) -> dict:
    """The KFP API's ``GET /apis/v2beta1/healthz`` body: ``tag_name`` (the backend version), ``multi_user``.
    Read raw: kfp.Client's own ``get_kfp_healthz`` parses it into a model that drops the version."""
    api = getattr(client, "_healthz_api", None)
    if api is None:
        return {}
    resp = _api("read the server version", api.healthz_service_get_healthz, _preload_content=False)
    try:
        return json.loads(resp.data or b"{}")
    except ValueError:
        return {}


def check_server(client, host: str, namespace: Optional[str], out=print, *, need_version: bool = True) -> dict:
    """Refuse, before anything is created, a KFP backend older than :data:`MIN_KFP_VERSION` (exit 1) and a
    multi-user server without ``--namespace`` (exit 2)."""
    info = server_info(client)
    floor = ".".join(map(str, MIN_KFP_VERSION))
    if need_version:
        tag = info.get("tag_name")
        version = parse_version(tag)
        if version is None:
            out(f"warning: the KFP API at {host} does not report its version (tag_name {tag!r}); the pipeline "
                f"needs a KFP backend >= {floor}")
        elif version < MIN_KFP_VERSION:
            raise ClusterError(f"the KFP backend at {host} is version {tag}, older than {floor}: the compiled "
                               "pipeline's Kubernetes spec sets the secret fields 'optional' and "
                               "'secretNameParameter', which older KFP drivers reject ('unknown field') at the "
                               f"first step; upgrade KFP to >= {floor} (docs/cluster.md, prerequisites)")
    if info.get("multi_user") and not namespace:
        raise ConfigError(f"--namespace is required: the KFP API at {host} runs in multi-user mode; pass your "
                          "Kubeflow profile namespace, e.g. --namespace kubeflow-user-example-com")
    return info


# --------------------------------------------------------------------------- submit


def submit(host: str, config: Optional[str], overrides: Optional[list[str]] = None, *, pipeline: str = "main",
           experiment: Optional[str] = None, run_name: Optional[str] = None, run_id: Optional[str] = None,
           namespace: Optional[str] = None, client=None, out=print, ui_url: Optional[str] = None,
           cache: bool = False) -> dict:
    """Compile for the cluster and create one KFP run; returns ids and the UI link. ``cache``: let KFP reuse
    a task of an earlier KFP run with the same run id, config and inputs (off: every step decides from the
    object store; docs/cluster.md, "Caching")."""
    from ensemw2s.storage import validate_name

    target = load_target(pipeline, config, overrides)
    run_id = validate_name("run id", run_id) if run_id is not None else _new_run_id(target)
    if target.ablation is not None:
        from ensemw2s.ablation import child_runs

        children = child_runs(target.ablation.plan(), run_id)  # validates every child run id now
        if not target.ablation.grid:
            out("note: the ablation config has no 'grid:'; submitting a single grid point (base config) over "
                f"seeds {target.ablation.seeds}")
    experiment = experiment or DEFAULT_EXPERIMENT[pipeline]
    run_name = run_name or f"ensemw2s {pipeline} {run_id}"
    with tempfile.TemporaryDirectory(prefix="ensemw2s-submit-") as tmp:
        package = compile_target(target, Path(tmp) / "pipeline.yaml", cache=cache)
        client = client or make_client(host, namespace)
        check_server(client, host, namespace, out)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            result = _api("create run", client.create_run_from_pipeline_package, str(package),
                          arguments={"run_id": run_id}, run_name=run_name, experiment_name=experiment,
                          namespace=namespace, service_account=target.cfg.resources.service_account or None)
    kfp_run_id = result.run_id
    info = {"run_id": run_id, "kfp_run_id": kfp_run_id, "experiment": experiment, "pipeline": pipeline,
            "url": _ui_url(host, "runs", kfp_run_id, ui_url)}
    info["cache"] = cache
    if target.ablation is None:
        out(f"submitted run {run_id} (KFP run {kfp_run_id}) to experiment {experiment!r}: "
            f"{target.cfg.boosting.rounds} boosting rounds; its start-run step takes the run id's lease and stores "
            f"the config at runs/{run_id}/run-summary/config.json (for rerun-step); KFP cache "
            f"{'on' if cache else 'off'}")
    else:
        info["children"] = [c["run_id"] for c in children]
        out(f"submitted ablation {run_id} (KFP run {kfp_run_id}) to experiment {experiment!r}: "
            f"{len(target.ablation.points)} grid points x {len(target.ablation.seeds)} seeds = "
            f"{len(children)} runs; comparison table at runs/{run_id}/compare/")
    _say_ui(out, info["url"], f"KFP run {kfp_run_id}")
    out(f"artifacts: s3://{target.cfg.storage.bucket}/{target.cfg.storage.prefix}/{run_id}/")
    return info


# --------------------------------------------------------------------------- schedule


def schedule(host: str, cron: str, config: Optional[str], overrides: Optional[list[str]] = None, *,
             pipeline: str = "main", experiment: Optional[str] = None, name: Optional[str] = None,
             namespace: Optional[str] = None, client=None, out=print, ui_url: Optional[str] = None) -> dict:
    """Create (or replace) the recurring run ``name`` in ``experiment``; every firing gets a fresh run id."""
    if not cron:
        raise ConfigError('--cron is required (6 fields, seconds first, e.g. "0 0 3 * * *"), or --delete')
    cron = validate_cron(cron)  # before anything else: a bad cron must not reach the server
    target = load_target(pipeline, config, overrides)
    experiment = experiment or DEFAULT_EXPERIMENT[pipeline]
    name = name or experiment
    if not name.strip():
        raise ConfigError("--name must not be empty")
    with tempfile.TemporaryDirectory(prefix="ensemw2s-schedule-") as tmp:
        package = compile_target(target, Path(tmp) / "pipeline.yaml", recurring=True)
        client = client or make_client(host, namespace)
        check_server(client, host, namespace, out)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            exp = _api("create experiment", client.create_experiment, name=experiment, namespace=namespace)
            old = _recurring_runs_named(client, exp.experiment_id, name)
            created = _api("create recurring run", client.create_recurring_run,
                           experiment_id=exp.experiment_id, job_name=name,
                           description=f"ensemw2s {pipeline}, cron {cron}", cron_expression=cron,
                           max_concurrency=1, no_catchup=True, params={"run_id": ""},
                           pipeline_package_path=str(package), enabled=True,
                           service_account=target.cfg.resources.service_account or None)
            for rr in old:
                _api("delete recurring run", client.delete_recurring_run, rr)
    info = {"recurring_run_id": created.recurring_run_id, "name": name, "experiment": experiment,
            "cron": cron, "replaced": old,
            "url": _ui_url(host, "recurringrun", created.recurring_run_id, ui_url)}
    what = f"replaced {len(old)} earlier one(s)" if old else "new"
    out(f"scheduled {pipeline} as recurring run {name!r} ({created.recurring_run_id}, {what}) in experiment "
        f"{experiment!r}, cron {cron!r} (second minute hour day month weekday)")
    _say_ui(out, info["url"], f"recurring run {created.recurring_run_id}")
    return info


def unschedule(host: str, *, pipeline: str = "main", experiment: Optional[str] = None,
               name: Optional[str] = None, namespace: Optional[str] = None, client=None, out=print) -> dict:
    """Delete every recurring run named ``name`` (default: the experiment name, as :func:`schedule`) in
    ``experiment`` (the Helm chart's pre-delete hook). Nothing to delete is not an error."""
    if pipeline not in PIPELINES:
        raise ConfigError(f"--pipeline {pipeline!r} is not allowed; allowed values: {', '.join(PIPELINES)}")
    experiment = experiment or DEFAULT_EXPERIMENT[pipeline]
    name = name or experiment
    client = client or make_client(host, namespace)
    check_server(client, host, namespace, out, need_version=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            exp = _api("find experiment", client.get_experiment, experiment_name=experiment, namespace=namespace)
        except ValueError:  # kfp.Client: no experiment of that name
            exp = None
        ids = _recurring_runs_named(client, exp.experiment_id, name) if exp is not None else []
        for rr in ids:
            _api("delete recurring run", client.delete_recurring_run, rr)
    out(f"deleted {len(ids)} recurring run(s) named {name!r} in experiment {experiment!r}" if ids else
        f"no recurring run named {name!r} in experiment {experiment!r}: nothing to delete")
    return {"deleted": ids, "name": name, "experiment": experiment}


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
