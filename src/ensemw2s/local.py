"""Running the pipeline on this machine: kfp.local's SubprocessRunner over the real DAG, against the object
store (the embedded SeaweedFS server unless an endpoint is configured).

- :func:`run_local`: the whole DAG for one run id (steps complete in storage for the same config and inputs
  are restored, not recomputed), then the run summary;
- :func:`fork`: start a run from a copy of another run's artifacts;
- :func:`check_models`: resolve the configured models before anything starts.

Orchestration layer: this module imports ``pipelines`` (and through it kfp); the core never imports it.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ensemw2s import provenance
from ensemw2s.errors import AssetError, ConfigError, ModelError
from ensemw2s.steps import keys


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
    # the full config of the run, so any step can be rerun later from object storage alone
    provenance.store_config(store, run_id, cfg)
    os.environ["ENSEMW2S_COMMIT"] = commit = provenance.code_commit()  # every step records it with its timing
    t0 = time.perf_counter()
    pipeline(run_id=run_id)
    wall = time.perf_counter() - t0
    report_dir = root / "report"
    store.get_dir(run_id, keys.REPORT, "report", report_dir)
    metrics = json.loads((report_dir / "metrics.json").read_text())
    timings = provenance.step_timings(store, run_id)
    work = sum(t["work_seconds"] for t in timings.values())
    summary = {"run_id": run_id, "commit": commit, "machine": provenance.machine_info(),
               "wall_seconds": round(wall, 1), "steps": len(timings), "step_work_seconds": round(work, 1),
               "orchestration_overhead_per_step": round((wall - work) / max(1, len(timings)), 2),
               "timings": timings, "report_uri": store.uri(run_id, keys.REPORT, "report"),
               # set by the science sweep (`python -m benchmarks.science science --jobs n`): other runs shared the machine, so step times are longer
               "parallel_jobs": int(os.environ.get("ENSEMW2S_PARALLEL_JOBS", "1")),
               "threads": os.environ.get("OMP_NUM_THREADS"),
               "report_dir": str(report_dir)}
    store.put_json(run_id, keys.RUN_SUMMARY, "summary.json", summary)
    return {"metrics": metrics, "summary": summary}


def check_models(cfg) -> None:
    """Resolve the expert and student models before anything starts: an unknown name or a broken model
    folder must fail here, not minutes later inside a pipeline step."""
    from ensemw2s import assets
    from ensemw2s.modeling import check_weights_folder

    for key, name in (("experts.model", cfg.experts.model), ("student.model", cfg.student.model)):
        try:
            path = assets.resolve_model(name)
        except AssetError as exc:
            if name in assets.MODEL_REGISTRY:  # known but not set up: an environment problem, not the config
                raise
            raise ConfigError(f"{key}: {exc}") from None
        if Path(path).is_dir():
            try:
                check_weights_folder(Path(path))
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


def run(cfg, run_id: str, *, from_run: str | None = None, config_arg: str | None = None, out=print) -> int:
    """``ensemw2s run``: check the models, connect to the object store, optionally fork, run, print the
    per-step times and the results table. A failed step gives exit 1 and the command that resumes."""
    import re
    import sys

    from ensemw2s import storage

    storage.validate_name("run id", run_id)
    check_models(cfg)
    where = storage.storage_env(cfg.storage)
    resume = f"ensemw2s run --run-id {run_id}" + (f" --config {config_arg}" if config_arg else "")
    out(f"ensemw2s run {run_id}: {cfg.boosting.rounds} rounds, experts {cfg.experts.model}, student "
        f"{cfg.student.model}, data {cfg.data.easy} -> {cfg.data.hard}; object store {where['endpoint']}"
        f" ({'embedded SeaweedFS' if where['embedded'] else 'external'})")
    sys.stdout.flush()
    if from_run:
        fork(cfg, from_run, run_id)
    try:
        result = run_local(cfg, run_id)
    except RuntimeError as exc:
        # kfp.local: "Pipeline ensemw2s finished with status FAILURE. Inner task failed: <task>." (coloured)
        if "finished with status" not in str(exc):
            raise
        msg = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        print(f"error: run {run_id} failed: {msg} The step's own error is in the log above; fix it and resume "
              f"with: {resume}", file=sys.stderr)
        return 1
    s = result["summary"]
    out("\nper-step wall time (work inside the step, s):")
    for step, t in s["timings"].items():
        out(f"  {step:28s} {t['work_seconds']:8.1f}{'  (restored from storage)' if t.get('restored') else ''}")
    out(f"total {s['wall_seconds']:.1f} s; steps' own work {s['step_work_seconds']:.1f} s; orchestration + "
        f"interpreter start-up {s['orchestration_overhead_per_step']:.2f} s per step")
    out("\n" + (Path(s["report_dir"]) / "report.md").read_text())
    out(f"report: {s['report_uri']}/files/report.md (local copy: {s['report_dir']}/report.md, "
        f"report.html, accuracy_by_round.png)")
    out(f"rerun or resume with: {resume}")
    return 0


def show_report(cfg, run_id: str, *, as_json: bool = False, out=print) -> int:
    """``ensemw2s report``: the results table (or metrics JSON) of a stored run."""
    import tempfile

    from ensemw2s import storage
    from ensemw2s.evaluation import render_report

    storage.storage_env(cfg.storage)
    store = storage.Store.from_config(cfg.storage)
    store.check()
    with tempfile.TemporaryDirectory() as tmp:
        store.get_dir(run_id, keys.REPORT, "report", Path(tmp) / "r")
        metrics = json.loads((Path(tmp) / "r" / "metrics.json").read_text())
    out(json.dumps(metrics, indent=1) if as_json else render_report(metrics))
    return 0
