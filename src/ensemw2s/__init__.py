"""EnsemW2S: token-level AdaBoost ensembles of weak LLM experts supervising a strong student.

The pure core of the project; it never imports kfp (see components/ and pipelines/ for that).
"""

__version__ = "0.1.0"
