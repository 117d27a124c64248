"""Determinism: the same config and seed give bit-identical expert weights (sha256 of the adapter
safetensors in the manifests), pseudo-labels and metrics on CPU across two runs with different run ids: the
baseline and ``disturbed_run`` (every step of which its own attempts computed)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.s3, pytest.mark.timeout(1800)]

# files whose bytes must match; the rest (expert.json with train_seconds, eval.json with timings, the
# report's md/html/png) is covered by metrics.json and these
EXACT_SUFFIXES = (".safetensors", ".jsonl")


def _fingerprint(run) -> dict:
    st = run.store()
    out = {}
    for step in st.list_steps(run.run_id):
        for output in st.list_outputs(run.run_id, step):
            for f in st.get_manifest(run.run_id, step, output)["files"]:
                if f["path"].endswith(EXACT_SUFFIXES):
                    out[f"{step}/{output}/{f['path']}"] = f["sha256"]
    return out


def test_two_runs_are_bit_identical(baseline, disturbed_run, tmp_path):
    assert disturbed_run.attempts[-1]["rc"] == 0
    assert disturbed_run.run_id != baseline.run_id
    want, got = _fingerprint(baseline), _fingerprint(disturbed_run)
    adapters = [k for k in want if k.endswith("adapter_model.safetensors")]
    assert len([k for k in adapters if k.startswith("train_expert-")]) == 2, adapters
    assert len([k for k in adapters if k.startswith("train_student-")]) == 3, adapters
    assert any(k.startswith("pseudo_label-ensemble/") and k.endswith("labels.jsonl") for k in want)
    assert got.keys() == want.keys()
    differ = sorted(k for k in want if got[k] != want[k])
    assert not differ, f"differ between {baseline.run_id} and {disturbed_run.run_id}: {differ}"
    assert disturbed_run.metrics(tmp_path / "d") == baseline.metrics(tmp_path / "b")
