"""Stored runs for the run-browsing and page tests, written to a real S3 server (the SeaweedFS of the test
fixtures) in the layout a run leaves: the stored config, the run summary and status, every step's timing.json
and step.log, and a complete report artifact (metrics.json from the real ``build_metrics`` of made-up
per-question predictions, predictions.jsonl, report.md, report.html). Made-up numbers, real formats, so the
tests need no pipeline run (tests/pipeline/test_local_run.py covers the real run end to end)."""
from __future__ import annotations

import pytest
from stored_runs import ROUNDS, store_run


@pytest.fixture(scope="module")
def stored_runs(s3_server, tmp_path_factory):
    """``(store, {run_id: record}, ablation)``: two seeds of one config, a results-page run (``sci-*``) with more
    ensemble accuracy, an ablation (base id with plan.json and the compare step's table, two (point, seed) runs
    of which one is stored) and a run that failed at its third step. Made once per test module; the S3
    environment stays set while its tests run."""
    import dataclasses

    from s3_fixtures import unique_bucket

    from ensemw2s import ablation
    from ensemw2s.config import StorageConfig
    from ensemw2s.steps import compare
    from ensemw2s.storage import Store

    tmp_path = tmp_path_factory.mktemp("stored-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("S3_ENDPOINT_URL", s3_server.endpoint)
        mp.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
        mp.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        store = Store.from_config(dataclasses.replace(StorageConfig(), bucket=unique_bucket()))
        store.check()
        runs = {
            "20261201-101500-aaaaaa": store_run(store, "20261201-101500-aaaaaa", seed=0, tmp=tmp_path),
            "20261201-111500-bbbbbb": store_run(store, "20261201-111500-bbbbbb", seed=1, tmp=tmp_path),
            "sci-t-s0-cccccc": store_run(store, "sci-t-s0-cccccc", seed=0, shift=0.15,
                                         overrides=["boosting.alpha_rule=samme"], tmp=tmp_path),
            "20261201-121500-failed": store_run(store, "20261201-121500-failed", seed=0, tmp=tmp_path,
                                                complete=False),
        }
        ab = ablation.ablation_from_dict({"base": {"seed": 0, "boosting": {"rounds": ROUNDS}},
                                          "grid": {"boosting.alpha_rule": ["prior", "uniform"]}, "seeds": [0]})
        plan = ab.plan()
        children = ablation.write_plan(plan, "ablation-nightly1", None, store.cfg)
        stored_child = children[0]["run_id"]
        runs[stored_child] = store_run(store, stored_child, seed=0, shift=0.05, tmp=tmp_path)
        compare.run(plan, base_run_id="ablation-nightly1", out_dir=tmp_path / "compare", storage=store.cfg)
        yield store, runs, {"base": "ablation-nightly1", "children": [c["run_id"] for c in children]}
        for rid in store.list_runs():
            store.delete_run(rid)
