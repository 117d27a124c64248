"""What every step shares: argument parsing of the common flags, and its artifacts in object storage.

A step writes its outputs to local folders (the KFP artifact paths), then :meth:`StepIO.publish` uploads
each to ``s3://<bucket>/<prefix>/<run_id>/<step>/<output>/`` with a manifest written last. Before doing any
work a step calls :meth:`StepIO.restore`: when all its outputs are already complete in storage for the same
config hash (a resumed run), it downloads them instead of recomputing. An input folder that is absent
locally is fetched from storage (:meth:`StepIO.fetch`), so any step can run from object storage alone.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

from ensemw2s.config import StorageConfig, load_config
from ensemw2s.errors import MissingObjectError, call_reporting_user_errors
from ensemw2s.provenance import code_commit, produced_record

log = logging.getLogger("ensemw2s.steps")

LOCAL_MARK = "_ensemw2s_artifact.json"


def is_local_complete(path: Path) -> bool:
    return (Path(path) / LOCAL_MARK).is_file()


def mark_local(path: Path, info: dict) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)
    (Path(path) / LOCAL_MARK).write_text(json.dumps(info, sort_keys=True))


class StepIO:
    """Object-storage side of one step execution (a no-op when ``run_id`` is None)."""

    def __init__(self, step: str, *, run_id: Optional[str], storage: Optional[StorageConfig],
                 config_hash: str, resume: bool = True, inputs: tuple = ()):
        # a single-step rerun (``ensemw2s rerun-step``) publishes under "<step>.attempt-<n>" and never
        # restores: it reads its inputs from the original run and leaves the original outputs untouched
        attempt = os.environ.get("ENSEMW2S_ATTEMPT")
        if attempt:
            step, resume = f"{step}.attempt-{int(attempt)}", False
        self.step, self.run_id, self.config_hash, self.resume = step, run_id, config_hash, resume
        self.t0 = time.time()
        self.store = None
        if run_id is not None:
            from ensemw2s import storage as st

            st.validate_name("run id", run_id)
            st.validate_name("step", step)
            self.store = st.Store.from_config(storage or StorageConfig())
            self.store.check()
            if inputs:
                # outputs are only reusable when the inputs they were made from are the same: an upstream step
                # recomputed with another config (a resumed run with a changed section, a forked run) changes
                # its files' checksums, so this step's key changes and it reruns
                from ensemw2s.config import config_hash as _hash

                self.config_hash = _hash({"config": config_hash,
                                          "inputs": [self._input_digest(p, o) for p, o in inputs]})

    def _input_digest(self, producer: str, output: str) -> Optional[str]:
        from ensemw2s import storage as st

        try:
            manifest = self.store.get_manifest(self.run_id, producer, output)
        except st.MissingObjectError:
            return None  # not in storage (local folders only): can never match a digest recorded from storage
        return manifest.get("config_hash", "") + ":" + ",".join(
            f"{f.get('path')}={f.get('sha256')}" for f in sorted(manifest["files"], key=lambda f: str(f.get("path"))))

    def _complete_same_config(self, output: str) -> bool:
        if not self.store.is_complete(self.run_id, self.step, output):
            return False
        manifest = self.store.get_manifest(self.run_id, self.step, output)
        return manifest.get("config_hash") == self.config_hash

    def restore(self, outputs: dict[str, Path]) -> bool:
        """True when every output was complete in storage and has been downloaded (skip the work)."""
        if self.store is None or not self.resume:
            return False
        if not all(self._complete_same_config(o) for o in outputs):
            return False
        for output, path in outputs.items():
            _clear(Path(path))
            self.store.get_dir(self.run_id, self.step, output, Path(path))
        print(f"[{self.step}] outputs already complete in {self.store.uri(self.run_id, self.step)}: "
              "restored, nothing recomputed", flush=True)
        self._timing(restored=True)
        return True

    def _timing(self, restored: bool) -> None:
        """Record how long the step's own work took (the run summary subtracts it from the runner's time)."""
        if self.store is not None:
            end = time.time()
            record = {"start": self.t0, "end": end, "work_seconds": round(end - self.t0, 3), "restored": restored,
                      "commit": code_commit()}
            if restored:  # keep the record of the execution that produced the outputs (this one only restored)
                record["produced"] = self._produced_timing()
            self.store.put_json(self.run_id, self.step, "timing.json", record)
        # The step's work is done. Move every live object (models, tensors, tokenizers) to the GC's permanent
        # generation so the interpreter's final collection at exit does not walk them: measured by
        # benchmarks/bench_pipeline.py, this is most of the per-step orchestration overhead after torch steps.
        gc.freeze()

    def _produced_timing(self) -> Optional[dict]:
        """The timing record of the execution that computed this step's outputs (None when none was kept)."""
        try:
            return produced_record(self.store.get_json(self.run_id, self.step, "timing.json"))
        except MissingObjectError:
            return None

    def publish(self, outputs: dict[str, Path], extra: Optional[dict] = None, message: str = "") -> None:
        """Mark every output complete locally, upload it (manifest last), record the timing; then print
        ``[<step>] <message>``, the step's one-line result."""
        for output, path in outputs.items():
            mark_local(Path(path), {"run_id": self.run_id, "step": self.step, "output": output,
                                    "config_hash": self.config_hash})
            if self.store is not None:
                self.store.put_dir(Path(path), self.run_id, self.step, output, producer=self.step,
                                   config_hash=self.config_hash, extra=extra)
        self._timing(restored=False)
        if message:
            print(f"[{self.step}] {message}", flush=True)

    def fetch(self, path: Optional[str | Path], producer: str, output: str) -> Path:
        """Local folder of an upstream artifact, downloaded from storage when it is not here."""
        if path and Path(path).is_dir() and any(Path(path).iterdir()):
            return Path(path)
        if self.store is None:
            raise FileNotFoundError(f"missing artifact: step {producer!r}, output {output!r}, local path {path} "
                                    "does not exist and no run id/object storage was given to fetch it from")
        from ensemw2s import assets

        dest = Path(path) if path else assets.home() / "cache" / "runs" / self.run_id / producer / output
        if not is_local_complete(dest):
            _clear(dest)
            self.store.get_dir(self.run_id, producer, output, dest)
        return dest


def _clear(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# --------------------------------------------------------------------------- CLI plumbing


def base_parser(step: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m ensemw2s.steps.{step}", description=description)
    p.add_argument("--config", default=None, help="YAML config (default: built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. boosting.rounds=3 (repeatable)")
    p.add_argument("--run-id", default=None, help="store outputs under runs/<run-id>/ in object storage "
                   "(and fetch absent inputs from there); omit to work on local folders only")
    p.add_argument("--no-resume", action="store_true", help="recompute even if outputs are complete in storage")
    return p


def run_main(fn: Callable[[], object]) -> int:
    """Run a step's work; user errors print one clear line and exit 2 (config) or 1 (other)."""
    logging.basicConfig(level=os.environ.get("ENSEMW2S_LOG", "INFO"), format="%(message)s")
    t0 = time.perf_counter()

    def work() -> int:
        fn()
        print(f"done in {time.perf_counter() - t0:.1f} s", flush=True)
        return 0

    return call_reporting_user_errors(work)


def step_main(parser: argparse.ArgumentParser, argv, work: Callable[..., object]) -> int:
    """``python -m ensemw2s.steps.<step>``: parse the flags, load the config (``--config`` / ``--set``) and call
    ``work(args, cfg, run_id=..., storage=..., resume=...)`` — the object-storage arguments every step's
    ``run()`` takes — under :func:`run_main`."""
    args = parser.parse_args(argv)

    def go():
        cfg = load_config(args.config, args.overrides)
        work(args, cfg, run_id=args.run_id, storage=cfg.storage, resume=not args.no_resume)

    return run_main(go)


def optional_path(value: Optional[str]) -> Optional[Path]:
    return Path(value) if value else None


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_json(path: Path, obj) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=1, sort_keys=True))
