"""Running the pipeline on this machine: kfp.local's SubprocessRunner over the real DAG, against the object
store (the embedded SeaweedFS server unless an endpoint is configured).

- :func:`run_local`: the whole DAG for one run id (steps complete in storage for the same config and inputs
  are restored, not recomputed), then the run summary;
- :func:`fork`: start a run from a copy of another run's artifacts;
- :func:`check_models`: resolve the configured models before anything starts.

While the DAG runs, the terminal shows the live view of :mod:`ensemw2s.liveview` (one line per step); kfp.local's
output and each step's full log go to ``<workdir>/<run_id>/logs/<step>.log``, uploaded next to the step's
artifacts (``runs/<run_id>/<step>/step.log``). ``verbose`` shows everything as it comes instead.

Orchestration layer: this module imports ``pipelines`` (and through it kfp); the core never imports it.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from ensemw2s import liveview, provenance
from ensemw2s.errors import EXIT_INTERRUPTED, AssetError, ConfigError, ModelError
from ensemw2s.steps import keys

STEP_LOG = "step.log"  # a step's full log, beside its artifacts: runs/<run_id>/<step>/step.log


class RunFailed(RuntimeError):
    """kfp.local's failure, with the step that failed and where its full log is."""

    def __init__(self, message: str, *, step: str | None, log_path: Path | None, log_uri: str | None):
        super().__init__(message)
        self.step, self.log_path, self.log_uri = step, log_path, log_uri


def task_keys(pipeline) -> dict[str, str]:
    """kfp task name (and component name without ``comp-``, as kfp.local logs it) -> step key (the display
    name the DAG gives every task)."""
    out = {}
    for name, task in pipeline.pipeline_spec.root.dag.tasks.items():
        out[name] = task.task_info.name or name
        out[task.component_ref.name.removeprefix("comp-")] = task.task_info.name or name
    return out


def _log_uploader(store, run_id: str):
    """Upload a closed step log next to the step's artifacts; a restored step keeps the log of the execution
    that computed it. Never fails the run (the log stays on disk)."""
    def upload(st) -> None:
        try:
            if st.status == "restored" and store.exists(run_id, st.key, STEP_LOG):
                return
            store.put_file(st.log_path, run_id, st.key, STEP_LOG)
        except Exception as exc:  # noqa: BLE001 - storage down: the step's own failure is what matters
            print(f"(could not upload {st.log_path}: {exc})", flush=True)
    return upload


def _put_status(store, run_id: str, status: str, **extra) -> None:
    """``run-summary/status.json``: running / succeeded / failed (with the failed step), for ``runs list``."""
    import datetime as dt

    try:
        store.put_json(run_id, keys.RUN_SUMMARY, "status.json", {
            "status": status, "updated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **extra})
    except Exception:  # noqa: BLE001 - a status record must never mask the run's own outcome
        pass


def run_local(cfg, run_id: str, *, workdir: Path | None = None, verbose: bool = False,
              terminal: bool | None = None) -> dict:
    """Run the compiled DAG with kfp.local's SubprocessRunner; return the metrics and timings.

    The live view goes to stdout (``terminal``: force the live form (True) or the plain one (False) instead
    of asking isatty); ``verbose``: kfp.local's own output instead. A failed step raises :class:`RunFailed`.
    """
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
    os.environ["ENSEMW2S_COMMIT"] = commit = provenance.code_commit()  # every step records it with its timing
    view = liveview.RunView(run_id, list(keys.run_steps(cfg.boosting.rounds, keys.students_enabled(cfg))), task_keys(pipeline))
    log_dir = root / "logs"
    started = False  # the run's own records are written only once it holds its run id
    t0, started_at = time.perf_counter(), time.time()
    try:
        with _progress_env(not verbose), liveview.capture(view, log_dir, verbose=verbose, terminal=terminal,
                                                           on_log_closed=_log_uploader(store, run_id)):
            # issue 13: one live run per run id (a second one is refused)
            from ensemw2s.lease import run_lease

            with run_lease(store, run_id):
                started = True
                # the full config of the run (only once we hold the run id), so any step can be rerun from storage
                provenance.store_config(store, run_id, cfg)
                _put_status(store, run_id, "running", log_dir=str(log_dir))
                pipeline(run_id=run_id)
    except KeyboardInterrupt:  # Ctrl-C (the steps got it too and stopped): `runs list` says so, not "running"
        if started:
            _put_status(store, run_id, "interrupted", steps=[st.key for st in view.running()], log_dir=str(log_dir))
        raise
    except RuntimeError as exc:
        if "finished with status" not in str(exc):  # not a failed step (e.g. the run id is held by a live run)
            raise
        failed = view.failed()
        _put_status(store, run_id, "failed", step=failed.key if failed else None, log_dir=str(log_dir))
        msg = liveview.strip_ansi(str(exc))
        for task, key in view.task_names.items():
            msg = msg.replace(f"'{task}'", key)
        raise RunFailed(msg, step=failed.key if failed else None, log_path=failed.log_path if failed else None,
                        log_uri=store.uri(run_id, failed.key, STEP_LOG) if failed else None) from None
    finally:
        if started:
            with contextlib.suppress(Exception):
                store.put_file(log_dir / "kfp-local.log", run_id, keys.RUN_SUMMARY, "kfp-local.log")
    wall, ended_at = time.perf_counter() - t0, time.time()
    report_dir = root / "report"
    store.get_dir(run_id, keys.REPORT, "report", report_dir)
    metrics = json.loads((report_dir / "metrics.json").read_text())
    timings = provenance.step_timings(store, run_id)
    work = sum(t["work_seconds"] for t in timings.values())
    summary = {"run_id": run_id, "commit": commit, "machine": provenance.machine_info(),
               "wall_seconds": round(wall, 1), "started": started_at, "ended": ended_at, "steps": len(timings),
               "step_work_seconds": round(work, 1),
               "orchestration_overhead_per_step": round((wall - work) / max(1, len(timings)), 2),
               "timings": timings, "report_uri": store.uri(run_id, keys.REPORT, "report"),
               # set by the science sweep (`python -m benchmarks.science science --jobs n`): other runs shared the machine, so step times are longer
               "parallel_jobs": int(os.environ.get("ENSEMW2S_PARALLEL_JOBS", "1")),
               "threads": os.environ.get("OMP_NUM_THREADS"),
               "report_dir": str(report_dir), "log_dir": str(log_dir)}
    store.put_json(run_id, keys.RUN_SUMMARY, "summary.json", summary)
    _put_status(store, run_id, "succeeded", log_dir=str(log_dir))
    return {"metrics": metrics, "summary": summary}


@contextlib.contextmanager
def _progress_env(on: bool):
    """The step subprocesses' tqdm bars write progress records for the live view (restored afterwards)."""
    env = liveview.tqdm_env() if on else {}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_models(cfg) -> None:
    """Resolve the expert and student models before anything starts: an unknown name or a broken model
    folder must fail here, not minutes later inside a pipeline step."""
    from ensemw2s import assets
    from ensemw2s.modeling import check_weights_folder

    models = [("experts.model", cfg.experts.model)]
    if cfg.student.enabled:  # without the student stage its model is never loaded
        models.append(("student.model", cfg.student.model))
    for key, name in models:
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
    # not the report: until the fork's own report step has run, it must not look finished (runs list, pages)
    copied = store.copy_run(src_run, run_id, skip=(keys.RUN_SUMMARY, keys.REPORT))
    print(f"forked {len(copied)} artifacts of run {src_run} into {run_id}; steps whose config and inputs are "
          "unchanged will be restored, the rest recomputed", flush=True)


def run(cfg, run_id: str, *, from_run: str | None = None, config_arg: str | None = None, out=print,
        verbose: bool = False) -> int:
    """``ensemw2s run``: check the models, connect to the object store, optionally fork, run (the live view,
    or everything with ``verbose``), print the per-step times, the results table and where the report is. A
    failed step prints the end of its log and gives exit 1 with where its full log is and the command that
    resumes."""
    import sys

    from ensemw2s import storage

    storage.validate_name("run id", run_id)
    check_models(cfg)
    where = storage.storage_env(cfg.storage)
    resume = f"ensemw2s run --run-id {run_id}" + (f" --config {config_arg}" if config_arg else "")
    out(f"ensemw2s run {run_id}: {cfg.boosting.rounds} rounds, experts {cfg.experts.model}, "
        + (f"student {cfg.student.model}" if cfg.student.enabled else "no student stage (student.enabled: false)")
        + f", data {cfg.data.easy} -> {cfg.data.hard}; object store {where['endpoint']}"
        f" ({'embedded SeaweedFS' if where['embedded'] else 'external'})")
    from ensemw2s.modeling import describe_dtype

    out(describe_dtype(cfg))  # the precision every model step will use here, and why
    sys.stdout.flush()
    if from_run:
        fork(cfg, from_run, run_id)
    try:
        result = run_local(cfg, run_id, verbose=verbose)
    except KeyboardInterrupt:
        print(f"\nerror: run {run_id} interrupted (Ctrl-C); the finished steps are kept in storage, the interrupted "
              f"ones left nothing complete behind. Resume with: {resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RunFailed as exc:
        # kfp.local: "Pipeline ensemw2s finished with status FAILURE. Inner task failed: <task>."
        where = "The step's own error is in the log above"
        if exc.log_path is not None:
            # the step's own last lines are context (stdout); stderr keeps the one `error:` line
            lines = liveview.tail(exc.log_path)
            out(f"\n--- last {len(lines)} lines of the log of {exc.step} ---")
            for line in lines:
                out(f"  {line}")
            sys.stdout.flush()
            where = (f"Its full log: {exc.log_path} (also {exc.log_uri}; `ensemw2s runs log {run_id} {exc.step}`)"
                     if not verbose else f"{where}; its full log: {exc.log_path}")
        print(f"error: run {run_id} failed: {exc} {where}. Fix it and resume with: {resume}", file=sys.stderr)
        return 1
    s = result["summary"]
    out("\nper-step wall time (work inside the step, s):")
    for step, t in s["timings"].items():
        out(f"  {step:28s} {t['work_seconds']:8.1f}{'  (restored from storage)' if t.get('restored') else ''}")
    out(f"total {s['wall_seconds']:.1f} s; steps' own work {s['step_work_seconds']:.1f} s; orchestration + "
        f"interpreter start-up {s['orchestration_overhead_per_step']:.2f} s per step")
    out("\n" + (Path(s["report_dir"]) / "report.md").read_text())
    from ensemw2s.diagnostics import DIAG_PLOTS
    from ensemw2s.steps.report import BY_ROUND_PLOT

    plots = ", ".join([BY_ROUND_PLOT, *(name for name, _ in DIAG_PLOTS)])
    out(f"report: {s['report_uri']}/files/report.md (local copy: {s['report_dir']}/report.md, "
        f"report.html, {plots})")
    out(f"page:   {s['report_dir']}/report.html (open in a browser; all runs: ensemw2s runs page -o runs-page)")
    out(f"logs:   {s['log_dir']}/<step>.log (`ensemw2s runs log {run_id} <step>`; "
        f"`ensemw2s runs show {run_id}` lists the steps)")
    out(f"rerun or resume with: {resume}")
    return 0


def show_report(cfg, run_id: str, *, as_json: bool = False, out=print) -> int:
    """``ensemw2s report``: the results table (or metrics JSON) of a stored run."""
    import tempfile

    from ensemw2s import storage
    from ensemw2s.evaluation import render_report

    storage.storage_env(cfg.storage)
    store = storage.Store.from_config(cfg.storage)
    store.check(create=False)  # a read never creates the bucket
    with tempfile.TemporaryDirectory() as tmp:
        store.get_dir(run_id, keys.REPORT, "report", Path(tmp) / "r")
        metrics = json.loads((Path(tmp) / "r" / "metrics.json").read_text())
    out(json.dumps(metrics, indent=1) if as_json else render_report(metrics))
    return 0
