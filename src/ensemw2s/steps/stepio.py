"""What every step shares: argument parsing of the common flags, and its artifacts in object storage.

A step writes its outputs to local folders (the KFP artifact paths), then :meth:`StepIO.publish` uploads
each to ``s3://<bucket>/<prefix>/<run_id>/<step>/<output>/`` with a manifest written last. Before doing any
work a step calls :meth:`StepIO.restore`: when all its outputs are already complete in storage for the same
config hash (a resumed run), it downloads them instead of recomputing. An input folder that is absent
locally is fetched from storage (:meth:`StepIO.fetch`), so any step can run from object storage alone.

In the pipeline the object store is the one source of truth (docs/cluster.md, "One artifact store"): a KFP
output artifact holds only a pointer (:func:`kfp_point`: the S3 URI and the digest of the manifest, also in the
artifact's metadata), and the step's files are written to a work folder (:func:`kfp_work_dir`) and uploaded.
:meth:`StepIO.fetch` follows a pointer: it uses a local copy only when it matches the manifest (sizes and
CRC32C), else downloads; a pointer whose manifest has changed since is an error, never a silent mix.
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
POINTER = "_ensemw2s_pointer.json"  # the one file of a KFP output artifact: where the files are in S3
SCRATCH_ENV = "ENSEMW2S_SCRATCH"  # a pod's scratch volume (pipelines/k8s.py): work folders and fetched inputs


def is_local_complete(path: Path) -> bool:
    return (Path(path) / LOCAL_MARK).is_file()


def mark_local(path: Path, info: dict) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)
    (Path(path) / LOCAL_MARK).write_text(json.dumps(info, sort_keys=True))


# when the running step started: its entry point (:func:`step_main`), or the import of this module (what a KFP
# component does first). A step's timing record starts there, so what it does before its StepIO exists (its
# config, its resume key: importing torch for resources.dtype) counts as the step's work, not as orchestration
# (benchmarks/bench_pipeline.py). The first StepIO consumes it.
_ENTERED: Optional[float] = time.time()


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
        global _ENTERED
        self.t0, _ENTERED = _ENTERED or time.time(), None  # consumed: a later StepIO in this process starts anew
        self.store = None
        self.lease = None
        if run_id is not None:
            from ensemw2s import storage as st

            st.validate_name("run id", run_id)
            st.validate_name("step", step)
            self.store = st.Store.from_config(storage or StorageConfig())
            self.store.check()
            if not attempt:  # in a cluster pod: hold the run's lease while working (ensemw2s.lease)
                from ensemw2s.lease import step_lease

                self.lease = step_lease(self.store, run_id)
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
            if local_matches(Path(path), self.store.get_manifest(self.run_id, self.step, output)):
                continue  # this machine already has these very files (a resumed local run)
            _clear(Path(path))
            self.store.get_dir(self.run_id, self.step, output, Path(path))
        print(f"[{self.step}] outputs already complete in {self.store.uri(self.run_id, self.step)}: "
              "restored, nothing recomputed", flush=True)
        self._timing(restored=True)
        return True

    def _timing(self, restored: bool) -> None:
        """Record how long the step's own work took (the run summary subtracts it from the runner's time)."""
        if self.lease is not None:  # the step's work is over: the run keeps the lease until end-run
            self.lease.stop_heartbeat()
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
        _arm_fast_exit()

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
        """Local folder of an upstream artifact: ``path`` itself when it holds the files; for a KFP pointer
        (or no path) a local copy that matches the manifest in storage, downloaded when there is none."""
        pointer = read_pointer(path) if path else None
        if pointer is None and path and Path(path).is_dir() and any(Path(path).iterdir()):
            return Path(path)
        if self.store is None:
            raise FileNotFoundError(f"missing artifact: step {producer!r}, output {output!r}, local path {path} "
                                    "does not exist and no run id/object storage was given to fetch it from")
        run_id = self.run_id
        candidates = []
        if pointer is not None:
            run_id, producer, output = pointer["run_id"], pointer["step"], pointer["output"]
            if pointer.get("local"):
                candidates.append(Path(pointer["local"]))  # the producer's work folder, on this machine?
            dest = local_artifact_dir(run_id, producer, output)
        else:
            dest = Path(path) if path else local_artifact_dir(run_id, producer, output)
        manifest = self.store.get_manifest(run_id, producer, output)
        if pointer is not None and manifest_digest(manifest) != pointer.get("digest"):
            from ensemw2s.errors import CorruptArtifactError

            raise CorruptArtifactError(
                f"the KFP artifact of step {producer!r} output {output!r} points at "
                f"{self.store.uri(run_id, producer, output)}/ with digest {pointer.get('digest')}, but the "
                f"manifest there now has digest {manifest_digest(manifest)}: the step was recomputed since this "
                "pointer was written (e.g. a KFP cache hit of an older execution); rerun without the KFP cache "
                "(ensemw2s submit --no-cache)")
        for candidate in candidates + [dest]:
            if local_matches(candidate, manifest):
                return candidate
        _clear(dest)
        self.store.get_dir(run_id, producer, output, dest)
        return dest


# A step process whose work is stored ends without tearing the interpreter down: module teardown after torch and
# transformers costs 0.11-0.18 s even after gc.freeze() (0.4-1.1 s without it; measured on this 2-core CPU), per
# step. Only in a process that exists to run one step (a KFP component: ``python -m kfp.dsl.executor_main``, or
# ``python -m ensemw2s.steps.<step>``), never in a test runner or the CLI; only when nothing failed (an uncaught
# exception, a non-zero exit code of step_main): then the exit is the ordinary one, with its exit code.
_EXIT = {"armed": False, "failed": False}


def _step_process() -> bool:
    import sys

    name = getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name", "") or ""
    return name == "kfp.dsl.executor_main" or name.startswith("ensemw2s.steps.")


def _arm_fast_exit() -> None:
    import atexit

    if not _EXIT["armed"] and _step_process():
        _EXIT["armed"] = True
        atexit.register(_fast_exit)  # runs before every exit handler registered earlier (last in, first out)


def _fast_exit() -> None:
    import sys

    if _EXIT["failed"] or getattr(sys, "last_value", None) is not None:  # an uncaught exception: ordinary exit
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


def ensemble_label_settings(ensemble: dict) -> dict:
    """The ``ensemble`` settings the ensemble's own labels depend on: all but ``single`` (which expert is the
    single-weak-expert baseline does not change the ensemble)."""
    return {k: v for k, v in ensemble.items() if k != "single"}


def task_configs(cfg) -> dict[str, str]:
    """The config strings the pipeline's tasks receive, each holding exactly what its steps read (so KFP's
    cache key changes when, and only when, a setting that matters to the task changes):

    - ``split_weak``: of ``experts``, the model and ``train.max_length`` (the whole section when
      ``data.difficulty`` is ``crossfit``, which fine-tunes weak models);
    - ``round_boosting``: ``boosting`` without ``rounds`` (round t's steps do not depend on how many rounds
      follow it, so a run grown from 3 to 5 rounds reuses rounds 1-3);
    - ``no_ensemble``: ``{}`` for the tasks that read no ensemble setting (gold labels, student evaluation);
    - ``single_boosting``: of ``boosting``, only ``alpha_rule`` and ``error`` (the single expert's alpha under
      D_1);
    - ``ensemble_labels``: ``ensemble`` without ``single`` (the ensemble's labels do not depend on which
      expert is the single baseline);
    - ``dtype``: ``resources.dtype``, for the model steps that take it (not gold labels: they load no model);
    - the sections ``data``, ``experts``, ``boosting``, ``ensemble``, ``student``, ``eval``, ``resources``
      as they are (``start-run`` stores the whole config from them)."""
    from ensemw2s.config import to_dict
    from ensemw2s.data import needs_model_difficulty

    def j(obj) -> str:
        return json.dumps(obj, sort_keys=True)

    d = to_dict(cfg)
    crossfit = needs_model_difficulty(cfg.data) and cfg.data.difficulty == "crossfit"
    weak = d["experts"] if crossfit else {"model": cfg.experts.model,
                                          "train": {"max_length": cfg.experts.train.max_length}}
    out = {name: j(d[name]) for name in ("data", "experts", "boosting", "ensemble", "student", "eval",
                                          "resources")}
    out.update(split_weak=j(weak), round_boosting=j({k: v for k, v in d["boosting"].items() if k != "rounds"}),
               no_ensemble=j({}), single_boosting=j({"alpha_rule": cfg.boosting.alpha_rule, "error": cfg.boosting.error}),
               ensemble_labels=j(ensemble_label_settings(d["ensemble"])),
               dtype=str(getattr(cfg.resources, "dtype", "float32")))
    return out


def manifest_digest(manifest: dict) -> str:
    """The identity of an artifact's content: sha256 over its files' paths, sizes and sha256s."""
    import hashlib

    files = sorted((str(f.get("path")), f.get("size"), f.get("sha256")) for f in manifest.get("files", []))
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()[:32]


def local_matches(path: Path, manifest: dict) -> bool:
    """True when the folder ``path`` holds every file of ``manifest`` with its size and checksum (CRC32C, or
    sha256 for a manifest without one) and nothing else."""
    from ensemw2s.digests import file_digests

    path = Path(path)
    if not path.is_dir():
        return False
    files = manifest.get("files", [])
    here = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    if here != {str(f.get("path")) for f in files}:
        return False
    for f in files:
        p = path / str(f["path"])
        if p.stat().st_size != f.get("size"):
            return False
        algo = "crc32c" if f.get("crc32c") else "sha256"
        if file_digests(p, (algo,))[algo] != f.get(algo):
            return False
    return True


def local_artifact_dir(run_id: str, step: str, output: str) -> Path:
    """This machine's copy of a stored artifact: on the pod's scratch volume, else in the asset cache."""
    scratch = os.environ.get(SCRATCH_ENV)
    if scratch:
        return Path(scratch) / "runs" / run_id / step / output
    from ensemw2s import assets

    return assets.home() / "cache" / "runs" / run_id / step / output


def read_pointer(path) -> Optional[dict]:
    """The pointer in a KFP artifact folder (None when ``path`` is not one)."""
    f = Path(path) / POINTER
    if not f.is_file():
        return None
    data = json.loads(f.read_text())
    return data if isinstance(data, dict) and {"run_id", "step", "output", "digest"} <= set(data) else None


def kfp_work_dir(artifact_path: str, run_id: Optional[str], step: str, output: str) -> Path:
    """Where a pipeline step writes the files of one output: the KFP artifact folder itself when there is no
    run id (no object store); else on the pod's scratch volume, or beside the artifact folder (kfp.local), so
    the KFP artifact gets only the pointer (:func:`kfp_point`)."""
    if not run_id:
        return Path(artifact_path)
    if os.environ.get(SCRATCH_ENV):
        return local_artifact_dir(run_id, step, output)
    return Path(str(artifact_path).rstrip("/") + ".files")


def kfp_point(artifact, run_id: Optional[str], storage: Optional[StorageConfig], step: str, output: str,
              work: Path, extra: Optional[dict] = None) -> dict:
    """Make the KFP output ``artifact`` (anything with ``.path`` and ``.metadata``) a pointer to the stored
    artifact ``runs/<run_id>/<step>/<output>/``: a pointer file, and the S3 URI, digest, file count and bytes
    in its metadata (the KFP UI shows them). Returns the metadata. Without a run id the files stay in place."""
    if not run_id:
        return {}
    from ensemw2s import storage as st

    store = st.Store.from_config(storage or StorageConfig())
    manifest = store.get_manifest(run_id, step, output)
    meta = {"uri": store.uri(run_id, step, output) + "/", "manifest": store.manifest_uri(run_id, step, output),
            "digest": manifest_digest(manifest), "files": len(manifest["files"]),
            "bytes": sum(int(f.get("size") or 0) for f in manifest["files"]), "run_id": run_id, "step": step,
            "output": output, "config_hash": manifest.get("config_hash", ""), **(extra or {})}
    target = Path(artifact.path)
    if target.resolve() != Path(work).resolve():
        _clear(target)
        target.mkdir(parents=True, exist_ok=True)
        (target / POINTER).write_text(json.dumps({**meta, "local": str(Path(work).resolve())}, indent=1,
                                                 sort_keys=True))
    artifact.metadata.update(meta)
    return meta


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
    global _ENTERED
    _ENTERED = time.time()
    args = parser.parse_args(argv)

    def go():
        cfg = load_config(args.config, args.overrides)
        work(args, cfg, run_id=args.run_id, storage=cfg.storage, resume=not args.no_resume)

    rc = run_main(go)
    _EXIT["failed"] = _EXIT["failed"] or rc != 0  # the exit code must reach the caller: no fast exit
    return rc


def optional_path(value: Optional[str]) -> Optional[Path]:
    return Path(value) if value else None


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_json(path: Path, obj) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=1, sort_keys=True))
