"""The ablation DAG run for real through kfp.local on configs/tiny.yaml against SeaweedFS: a grid of two
boosting.rounds values (two loops, two sub-pipelines fed by grid-point tasks) and one seed, then compare, which
must find every child run's report. The compiled structure and its size are in tests/cluster/test_spec_size.py;
this is that the loops, the grid-point outputs and the stored plan work when executed."""
from __future__ import annotations

import json
import warnings

import pytest
from s3_fixtures import unique_bucket

pytestmark = [pytest.mark.s3, pytest.mark.slow]


def test_a_two_group_grid_runs_every_child_and_compares(repo_root, tiny_assets, s3_env, tmp_path):
    import kfp.local
    from pipelines.ablations import build_ablation_pipeline

    from ensemw2s.ablation import ablation_from_dict
    from ensemw2s.config import load_config, to_dict
    from ensemw2s.storage import Store

    bucket = unique_bucket()
    base = to_dict(load_config(repo_root / "configs/tiny.yaml", [f"storage.bucket={bucket}"]))
    ab = ablation_from_dict({"base": base, "grid": {"boosting.rounds": [1, 2]}, "seeds": [0]})
    st = Store.from_config(ab.base.storage)
    st.check()
    warnings.filterwarnings("ignore", message=r".*(no effect in the current local runner|non-Python base image).*")
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"),
                   raise_on_error=True)
    build_ablation_pipeline(ab, for_cluster=False)(run_id="grid")
    children = {f"grid-{p.name}-s0": p.cfg.boosting.rounds for p in ab.points}
    assert sorted(children.values()) == [1, 2]
    for child, rounds in children.items():
        assert st.is_complete(child, "report", "report"), child
        assert st.get_json(child, "run-summary", "config.json")["boosting"]["rounds"] == rounds  # from the plan
        assert {s for s in st.list_steps(child) if s.startswith("train_expert")} == {
            f"train_expert-r{t}" for t in range(1, rounds + 1)}
    st.get_dir("grid", "compare", "compare", tmp_path / "compare")
    summary = json.loads((tmp_path / "compare" / "compare.json").read_text())
    assert sorted(r["run_id"] for r in summary["runs"]) == sorted(children)
    assert all(r["ensemble_acc_ood"] is not None for r in summary["runs"])  # every child's report was found
