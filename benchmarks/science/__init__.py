"""Does EnsemW2S work with the models we have? The results tooling behind ``docs/results.md``.

Run from the repository root (it is not part of the installed package)::

    python -m benchmarks.science settings --config configs/science.yaml     # the pre-study (make prestudy)
    python -m benchmarks.science science --config configs/science.yaml --seeds 3 --jobs 2 \\
        --ablations configs/science_ablations.yaml                          # seeds + ablations (make science)

- :mod:`.prestudy` (``settings``): for each candidate easy -> hard setting, the round-1 weak expert and the
  gold-trained strong ceiling on the setting's OOD test, with standard errors; which settings qualify.
- :mod:`.runs` (``science``): each seed and each ablation is a real local pipeline run (``ensemw2s run`` in a
  child process), then each run's records are read back from object storage.
- :mod:`.page`: the stored per-question predictions of all seeds pooled into mean ± std tables, paired
  differences with 95 % intervals and a plot by round, written to ``docs/results.md``.

Every path defaults to the checkout this folder is in (:data:`REPO`, the parent of ``benchmarks/``), never to
where a package is installed; ``--out`` and friends point elsewhere.
"""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "docs" / "results"
DEFAULT_CONFIG = REPO / "configs" / "science.yaml"
