"""tests/gpu/smoke.sh at tiny sizes on the CPU: the GPU check must not rot between GPU sessions.

Runs the script as a GPU session would (``ENSEMW2S_GPU_SMOKE_TINY=1`` shrinks every size and allows the CPU;
torch.compile is skipped here: inductor's C++ build takes minutes on this machine and is exercised on the GPU),
then checks the one summary table: a row per SFT variant (eager, and eager + fused linear/cross-entropy), the
K=5 decode ratio and the multi-adapter rows, none FAILED. Numbers are not checked (tiny sizes mean nothing), but
the fused cross-entropy is: its loss and gradients equal the plain head + CE.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_script_runs_on_cpu_at_tiny_sizes(tmp_path):
    env = {**os.environ, "ENSEMW2S_GPU_SMOKE_TINY": "1", "ENSEMW2S_GPU_SMOKE_COMPILE": "0",
           "ENSEMW2S_GPU_SMOKE_PLAN": "e2x64,e2x64f", "ENSEMW2S_GPU_SMOKE_JSON": str(tmp_path / "smoke.json"),
           "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", str(ROOT / "tests" / "gpu" / "smoke.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout.split("=== GPU smoke summary", 1)[1]
    lines = table.splitlines()
    body = lines[next(i for i, line in enumerate(lines) if line.startswith("-----")) + 1:]
    checks = [line.split("  ")[0] for line in body if line.strip()]
    assert checks == ["SFT eager 2x64", "SFT eager + fused CE 2x64", "decode K=5 separate models / (HF/K)",
                      "multi-adapter decode K=5 stacked / single model", "multi-adapter decode K=5 stacked / switch",
                      "multi-adapter prefill K=5 stacked / one forward per expert"], table
    assert "FAILED" not in table, table
    assert "same ids 100%" in table  # stacked LoRA decoding == one forward per expert, on the CPU too


def test_fused_linear_cross_entropy_equals_plain():
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "tests" / "gpu" / "gpu_bench.py")
    gb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gb)
    torch.manual_seed(0)
    h = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 50, (37,))
    fused = gb.fused_linear_cross_entropy(h, w, t, chunk=8)
    (fused * 3).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    plain = torch.nn.functional.cross_entropy(h @ w.t(), t)
    (plain * 3).backward()
    assert torch.allclose(fused.double(), plain, atol=1e-6)
    assert torch.allclose(gh, h.grad, atol=1e-6) and torch.allclose(gw, w.grad, atol=1e-6)
