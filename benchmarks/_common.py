"""Shared helpers for the benchmarks: timing, peak memory, tables, real prompts, result files.

Benchmarks print a final table of ratios with PASS/FAIL per target and write the same numbers as JSON to
``build/bench/<name>.json`` (git-ignored) for docs/performance.md. ``ENSEMW2S_BENCH_QUICK=1`` shrinks every
size so a script can be checked in seconds (its numbers then mean nothing). ``ENSEMW2S_BENCH_THREADS=n`` sets
torch's thread count (see :func:`quiet_hf`).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "build" / "bench"
QUICK = os.environ.get("ENSEMW2S_BENCH_QUICK", "0") == "1"

if str(ROOT / "src") not in sys.path:  # run from a checkout without an installed package
    sys.path.insert(0, str(ROOT / "src"))
if str(ROOT) not in sys.path:  # pipelines/, components/
    sys.path.insert(0, str(ROOT))


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": mem, "python": platform.python_version(),
            "commit": commit, "loadavg": loadavg()}


def loadavg() -> str:
    """1/5/15-minute load averages: other work on a shared machine skews every timing here."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def versions() -> dict:
    out = {}
    for name in ("torch", "transformers", "peft", "kfp", "boto3"):
        with contextlib.suppress(Exception):
            out[name] = __import__(name).__version__
    return out


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0


# ----------------------------------------------------------------------------------------- memory (Linux)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    return _status_kib("VmHWM") * 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------ data


def arc_prompts(n: int, split: str = "test") -> list[str]:
    from ensemw2s.assets import dataset_file
    from ensemw2s.data import format_prompt, read_jsonl

    rows = read_jsonl(dataset_file("arc_easy", split))
    return [format_prompt(r) for r in rows[:n]]


def arc_rows(n: int, split: str = "train") -> list[dict]:
    from ensemw2s.assets import dataset_file
    from ensemw2s.data import read_jsonl

    return read_jsonl(dataset_file("arc_easy", split))[:n]


def random_lora_adapters(model: str, out: Path, k: int, std: float, seed: int) -> list[str]:
    """``k`` random LoRA adapters of ``model`` saved under ``out`` (r=16, alpha 32, all projections, lora_B ~
    N(0, std): lora_B starts at 0 in peft, so the copies would be the base itself), seeds ``seed``, ``seed``+1..."""
    quiet_hf()
    import torch
    from peft import LoraConfig, get_peft_model

    from ensemw2s.modeling import load_causal_lm

    dirs = []
    for i in range(k):
        base, _ = load_causal_lm(model, dtype="float32")
        torch.manual_seed(seed + i)
        lora = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                                               target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"]))
        with torch.no_grad():
            for name, p in lora.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, std)
        d = Path(out) / f"adapter_{i}"
        lora.save_pretrained(d)
        dirs.append(str(d))
        del lora, base
    return dirs


# ---------------------------------------------------------------------------------------------- output


def table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def _fmt(c) -> str:
    if isinstance(c, float):
        if math.isnan(c):
            return "n/a"
        if abs(c) >= 1000:
            return f"{c:,.0f}"
        if abs(c) >= 10:
            return f"{c:.1f}"
        return f"{c:.3g}" if abs(c) < 0.01 and c != 0 else f"{c:.2f}"
    return str(c)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def save(name: str, payload: dict) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}{'.quick' if QUICK else ''}.json"  # a quick check never overwrites real numbers
    payload = {"machine": machine(), "versions": versions(), "quick": QUICK,
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **payload}
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return path


def answer_as_child(doc: str, child) -> bool:
    """The child side of :func:`run_child`: with ``--child '<json>'`` print ``child(spec)`` as one JSON line and
    return True (the script then exits); without it return False (the script is the parent)."""
    import argparse

    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is None:
        return False
    print(json.dumps(child(json.loads(args.child))), flush=True)
    return True


def run_child(script: Path, spec: dict, *, timeout: float = 900) -> dict:
    """Run ``script --child '<json>'`` in a fresh interpreter (clean peak RSS); it prints one JSON line last."""
    proc = subprocess.run([sys.executable, str(script), "--child", json.dumps(spec)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    last = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(last[-1])


def quiet_hf() -> None:
    """Quiet HF logging; ``ENSEMW2S_BENCH_THREADS=n`` sets torch's intra-op threads (children inherit it).

    On a shared machine another process's threads make torch's OpenMP barriers stall (2 busy processes x 2
    threads on 2 cores: a decode step can take 10x longer); 1 thread each keeps the *ratios* meaningful."""
    threads = os.environ.get("ENSEMW2S_BENCH_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("ENSEMW2S_PROGRESS", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore")
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
