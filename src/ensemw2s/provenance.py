"""Where a run came from and what it cost: run ids, the source commit, the machine, the stored config, and
each step's timing record.

Everything here is read back from the run records in object storage (``runs/<run_id>/run-summary/`` and each
step's ``timing.json``), so reports and result pages state facts recorded by the run, never assumptions.
"""
from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path
from typing import Any, Optional

from ensemw2s.config import Config, config_hash, from_dict, merge_dicts, parse_overrides, to_dict
from ensemw2s.errors import MissingObjectError, StorageError
from ensemw2s.steps.keys import RUN_SUMMARY


def new_run_id(what: Any, prefix: str = "") -> str:
    """``[prefix]YYYYmmdd-HHMMSS-<6 hex of the config hash>`` (UTC); ``what``: a config or plan to hash."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{prefix}{stamp}-{config_hash(what)[:6]}"


def code_commit() -> str:
    """The source commit this code runs from: ``$ENSEMW2S_COMMIT`` (set by ``ensemw2s run`` for its steps, or by
    an image build), else ``git rev-parse`` of the checkout with ``+dirty`` for uncommitted changes to tracked
    files; "" when neither is known (an installed package without the variable)."""
    if os.environ.get("ENSEMW2S_COMMIT"):
        return os.environ["ENSEMW2S_COMMIT"]
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=False, timeout=10)
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=False, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head.stdout.strip() + ("+dirty" if dirty else "")


def machine_info() -> dict:
    """The machine a run ran on, as recorded in its summary: CPU cores, threads, accelerator, versions."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"hostname_hash": config_hash(platform.node())[:8], "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "gpu": gpu,
            "gpu_count": torch.cuda.device_count() if gpu else 0, "python": platform.python_version(),
            "torch": torch.__version__}


def produced_record(timing: dict) -> Optional[dict]:
    """From a step's timing.json record, the record of the execution that computed its outputs: the record
    itself, or for a restored step the one it kept under ``produced`` (None when none was kept)."""
    return timing.get("produced") if timing.get("restored") else timing


def produced_seconds(timing: dict) -> Optional[float]:
    """Seconds of work of the execution that computed a step's outputs (None when not recorded)."""
    rec = produced_record(timing)
    return None if rec is None else rec.get("work_seconds")


def step_timings(store, run_id: str) -> dict:
    """``{step key: timing.json record}`` of a stored run, in start order; steps without one are left out."""
    out = {}
    for step in store.list_steps(run_id):
        if step == RUN_SUMMARY:
            continue
        try:
            out[step] = store.get_json(run_id, step, "timing.json")
        except MissingObjectError:  # a step without timing (e.g. an older run) is simply not listed
            continue
    return dict(sorted(out.items(), key=lambda kv: kv[1].get("start", 0)))


def store_config(store, run_id: str, cfg: Config) -> None:
    """``runs/<run_id>/run-summary/config.json``: the full config, so any step can be rerun from storage."""
    store.put_json(run_id, RUN_SUMMARY, "config.json", to_dict(cfg))


def stored_config(store, run_id: str, overrides: Optional[list[str]] = None) -> Config:
    """The config a run was started with (``runs/<run_id>/run-summary/config.json``) with ``overrides``."""
    try:
        data = store.get_json(run_id, RUN_SUMMARY, "config.json")
    except MissingObjectError:
        where = store.uri(run_id, RUN_SUMMARY, "config.json")
        raise MissingObjectError(f"run {run_id!r} has no stored config ({where}, {store.endpoint}): is the run "
                                 "id right, and was it started by `ensemw2s run` or `ensemw2s submit`?") from None
    if not isinstance(data, dict):
        raise StorageError(f"{store.uri(run_id, RUN_SUMMARY, 'config.json')} is not a config mapping")
    return from_dict(Config, merge_dicts(data, parse_overrides(overrides))).validate()


def run_summary(store, run_id: str) -> Optional[dict]:
    """``runs/<run_id>/run-summary/summary.json`` (written when a local run ends), None when absent."""
    try:
        return store.get_json(run_id, RUN_SUMMARY, "summary.json")
    except MissingObjectError:
        return None
