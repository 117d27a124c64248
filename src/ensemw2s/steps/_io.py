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
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from ensemw2s.config import ConfigError, StorageConfig

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
        from ensemw2s.storage import MissingObjectError

        try:
            return produced_record(self.store.get_json(self.run_id, self.step, "timing.json"))
        except MissingObjectError:
            return None

    def publish(self, outputs: dict[str, Path], extra: Optional[dict] = None) -> None:
        for output, path in outputs.items():
            mark_local(Path(path), {"run_id": self.run_id, "step": self.step, "output": output,
                                    "config_hash": self.config_hash})
            if self.store is not None:
                self.store.put_dir(Path(path), self.run_id, self.step, output, producer=self.step,
                                   config_hash=self.config_hash, extra=extra)
        self._timing(restored=False)

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


def user_error_code(exc: BaseException) -> Optional[int]:
    """Exit code of a user-facing error (the command prints one ``error:`` line), None for a bug (traceback).

    2: the config or command line (ConfigError); 1: data, models, assets, object storage or a stored artifact
    (DataError, FileNotFoundError, ModelError, AssetError, StorageError and its MissingObjectError /
    CorruptArtifactError). Shared by ``ensemw2s`` and every ``python -m ensemw2s.steps.<step>``."""
    from ensemw2s.assets import AssetError
    from ensemw2s.data import DataError
    from ensemw2s.storage import StorageError
    from ensemw2s.training import ModelError

    if isinstance(exc, ConfigError):
        return 2
    if isinstance(exc, (DataError, FileNotFoundError, StorageError, AssetError, ModelError)):
        return 1
    return None


def run_main(fn: Callable[[], object]) -> int:
    """Run a step's work; user errors print one clear line and exit 2 (config) or 1 (other)."""
    logging.basicConfig(level=os.environ.get("ENSEMW2S_LOG", "INFO"), format="%(message)s")
    t0 = time.perf_counter()
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - user-facing errors become one line; anything else is re-raised
        code = user_error_code(exc)
        if code is None:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return code
    print(f"done in {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_json(path: Path, obj) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=1, sort_keys=True))


# --------------------------------------------------------------------------- the ensemble in a state


def ensemble_members(state: dict, io: StepIO, members: str, upto: Optional[int] = None) -> list[dict]:
    """Experts of a boosting state as ``[{round, alpha, path, lora, base_model}]``.

    ``members``: ``all`` = every expert with alpha > 0 (the EnsemW2S ensemble), ``first`` = the round-1
    expert alone (the single-weak-expert baseline, whatever its alpha). ``upto``: only rounds <= upto.
    """
    experts = [e for e in state["experts"] if upto is None or e["round"] <= upto]
    if members == "first":
        chosen = [e for e in experts if e["round"] == 1]
        if chosen and chosen[0]["alpha"] <= 0:
            chosen = [{**chosen[0], "alpha": 1.0}]
    elif members == "all":
        chosen = [e for e in experts if not e["skipped"] and e["alpha"] > 0]
    else:
        raise ValueError(f"members must be 'all' or 'first', got {members!r}")
    if not chosen:
        raise ValueError(f"no usable expert in the boosting state (rounds {[e['round'] for e in experts]}, "
                         "all with alpha <= 0?)")
    # a recorded path is only usable on the machine (or pod) that wrote it; elsewhere fetch into the cache
    return [{**e, "path": str(io.fetch(e["path"] if Path(e["path"]).is_dir() else None, e["step"], e["output"])
                              / "model")} for e in chosen]


def open_decoder(members: list[dict], combine: str, batch_size: int):
    """An EnsembleDecoder over the members; LoRA experts of one base share its weights."""
    from ensemw2s.ensemble import EnsembleDecoder
    from ensemw2s.training import load_causal_lm, load_saved

    alphas = [m["alpha"] for m in members]
    if all(m.get("lora") for m in members) and len({m["base_model"] for m in members}) == 1:
        base, tok = load_causal_lm(members[0]["base_model"])
        return EnsembleDecoder.from_lora_adapters(base, [m["path"] for m in members], alphas, tok,
                                                  combine=combine, batch_size=batch_size)
    loaded = [load_saved(m["path"]) for m in members]
    return EnsembleDecoder([m for m, _ in loaded], alphas, loaded[0][1], combine=combine, batch_size=batch_size)


def option_logprobs_by_round(members: list[dict], splits: dict[str, list[dict]],
                             batch_size: int) -> dict[int, dict[str, dict]]:
    """Each member loaded once and scored on every split given: ``{round: {split: {id: per-option token
    log-probs}}}``."""
    from ensemw2s.evaluation import option_logprobs
    from ensemw2s.training import load_saved

    out = {}
    for m in members:
        model, tok = load_saved(m["path"])
        out[m["round"]] = {name: option_logprobs(model, tok, rows, batch_size=batch_size)
                           for name, rows in splits.items()}
        del model
    return out


def produced_record(timing: dict) -> Optional[dict]:
    """From a step's timing.json record, the record of the execution that computed its outputs: the record
    itself, or for a restored step the one it kept under ``produced`` (None when none was kept)."""
    return timing.get("produced") if timing.get("restored") else timing


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


def chosen_members(active: list[dict], splits_dir: Path, select: str, batch_size: int,
                   lp_val: Optional[dict] = None) -> tuple[list[dict], dict]:
    """The EnsemW2S ensemble under ``ensemble.select_rounds``, from ``active`` = ``ensemble_members(state, io,
    "all")``: ``all`` = every one of them; ``val`` = rounds 1..T with T chosen by option log-likelihood accuracy
    on easy_val. ``lp_val``: the experts' option log-probs on easy_val by round when the caller has them.
    Returns ``(members, {chosen_rounds, val_acc_by_round})``."""
    if select == "all":
        return active, {"chosen_rounds": max(m["round"] for m in active), "val_acc_by_round": None}
    if select != "val":
        raise ConfigError(f"ensemble.select_rounds: {select!r} is not allowed; allowed values: all, val")
    from ensemw2s.data import read_jsonl
    from ensemw2s.evaluation import select_rounds

    val = read_jsonl(Path(splits_dir) / "easy_val.jsonl")
    if lp_val is None:
        lp_val = {r: lp["easy_val"] for r, lp in option_logprobs_by_round(active, {"easy_val": val},
                                                                          batch_size).items()}
    t, accs = select_rounds(val, lp_val, active)
    return [m for m in active if m["round"] <= t], {"chosen_rounds": t, "val_acc_by_round": accs}
