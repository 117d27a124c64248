"""How big a compiled pipeline may be, checked on every compile (``ensemw2s compile``, ``submit``,
``schedule``, the ``python pipelines/*.py`` scripts).

KFP stores a run as an Argo Workflow object in etcd, whose default request limit is 1.5 MiB; the Workflow
carries every task's component spec again (as driver arguments) and grows with the run's node status, so the
IR YAML must stay well below that: :data:`MAX_SPEC_BYTES`. A spec above it is refused before anything is sent,
with what to change (docs/cluster.md, "Big grids"). tests/cluster/test_spec_size.py compiles the main and the
ablation pipelines of the shipped configs against it.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from ensemw2s.errors import ConfigError

ETCD_LIMIT_BYTES = 1_572_864  # etcd's default --max-request-bytes (1.5 MiB)
MAX_SPEC_BYTES = 700_000  # under half of it: room for the Workflow's own copy of the specs and its status


def spec_stats(path) -> dict:
    """``{"bytes", "tasks", "components"}`` of a compiled IR YAML (tasks of every DAG, nested ones too)."""
    text = Path(path).read_text()
    spec = next(yaml.safe_load_all(text))
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec.get("components", {}).values() if "dag" in c]
    return {"bytes": len(text.encode()), "tasks": sum(len(d.get("tasks", {})) for d in dags),
            "components": len(spec.get("components", {}))}


def check_spec(path, *, what: str, hint: str = "use fewer boosting.rounds") -> Path:
    """``path`` when its size is within :data:`MAX_SPEC_BYTES`; else ConfigError (the file is removed)."""
    stats = spec_stats(path)
    if stats["bytes"] > MAX_SPEC_BYTES:
        Path(path).unlink(missing_ok=True)
        raise ConfigError(
            f"{what} compiles to {stats['bytes'] / 1e3:.0f} KB of KFP spec ({stats['tasks']} tasks), above the "
            f"limit of {MAX_SPEC_BYTES / 1e3:.0f} KB: KFP stores each run as an Argo Workflow in etcd "
            f"(1.5 MiB per object by default), which refuses bigger ones. To shrink it, {hint}")
    return Path(path)
