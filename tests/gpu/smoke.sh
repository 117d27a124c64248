#!/usr/bin/env bash
# GPU smoke benchmark: SFT MFU (compiled, fused linear + cross-entropy), K=5 ensemble decoding and the K=5
# multi-adapter (stacked LoRA) forward of a random-init ~0.5B Qwen2-style model (bf16); prints ONE table.
# Needs only this repository and a Python with torch + transformers (+ peft for the multi-adapter rows; without
# it those rows say FAILED and the rest runs). No weights, no downloads.
#   tests/gpu/smoke.sh                              # on a CUDA machine: one summary table (plan < 8 min)
#   ENSEMW2S_GPU_SMOKE_TINY=1 tests/gpu/smoke.sh    # tiny sizes, CPU allowed: checks the script itself
# PYTHON=... picks the interpreter; by default the first of python3, python, .venv/bin/python that sees a GPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
TINY="${ENSEMW2S_GPU_SMOKE_TINY:-0}"
has() { "$1" -c "import sys, torch, transformers; sys.exit(0 if ($2 or torch.cuda.is_available()) else 1)" 2>/dev/null; }
if [[ -z "${PYTHON:-}" ]]; then
  for cand in python3 python .venv/bin/python; do
    if command -v "$cand" >/dev/null 2>&1 && has "$cand" False; then PYTHON="$cand"; break; fi
  done
  if [[ -z "${PYTHON:-}" && "$TINY" == "1" ]]; then
    for cand in .venv/bin/python python3 python; do
      if command -v "$cand" >/dev/null 2>&1 && has "$cand" True; then PYTHON="$cand"; break; fi
    done
  fi
fi
if [[ -z "${PYTHON:-}" ]]; then
  echo "tests/gpu/smoke.sh: no Python with torch + transformers sees a CUDA GPU; skipping" \
       "(ENSEMW2S_GPU_SMOKE_TINY=1 runs tiny sizes on CPU)"
  exit 0
fi
# the package from this checkout without installing it (ensemw2s.ensemble needs only torch + transformers)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
echo "tests/gpu/smoke.sh: $PYTHON ($(command -v "$PYTHON"))"
exec "$PYTHON" tests/gpu/gpu_bench.py "$@"
