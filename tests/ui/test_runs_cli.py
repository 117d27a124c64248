"""``ensemw2s runs list | show | compare | page | log`` on stored runs (tests/ui/conftest.py): plain runs, seeds,
a results-page (``sci-*``) run, a nightly ablation (base id, plan, compare table, (point, seed) runs) and a
failed run. The paired differences must be those of ``ensemw2s.stats.paired_test`` on the stored predictions."""
import re

import pytest

from ensemw2s.stats import paired_test

pytestmark = pytest.mark.s3


def _cli(capsys, store, *args) -> str:
    from ensemw2s.cli import main

    rc = main(["runs", *args, "--set", f"storage.bucket={store.bucket}"])
    out = capsys.readouterr()
    assert rc == 0, out.out + out.err
    return out.out


def _row(out: str, run_id: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(run_id + " "))


def test_list_shows_every_kind_of_run(stored_runs, capsys):
    store, runs, abl = stored_runs
    out = _cli(capsys, store, "list")
    for rid, rec in runs.items():
        row = _row(out, rid)
        if "metrics" in rec:
            assert " complete " in row, row
            assert f"{rec['metrics']['ensemble_acc_ood']:.3f}" in row, row
    assert "failed at train_expert-r1 (2/19 steps done)" in _row(out, "20261201-121500-failed")
    assert "ablation: 1/2 runs complete; compared" in _row(out, abl["base"])
    assert "planned (no step yet)" in _row(out, abl["children"][1])
    assert "samme" in _row(out, "sci-t-s0-cccccc")
    # newest first: the run ids carry their date
    ids = [line.split()[0] for line in out.splitlines()[2:]]
    assert ids.index("20261201-121500-failed") < ids.index("20261201-101500-aaaaaa")


def test_show_has_the_table_steps_logs_and_artifacts(stored_runs, capsys):
    store, runs, _ = stored_runs
    rid = "20261201-101500-aaaaaa"
    out = _cli(capsys, store, "show", rid)
    m = runs[rid]["metrics"]
    assert "| EnsemW2S ensemble | " in out and f"{m['ensemble_acc_ood']:.3f}" in out
    split_row = next(line for line in out.splitlines() if line.startswith("split_data "))
    # the restored step shows the seconds of the execution that computed it
    assert " restored " in split_row and " 42.0 " in split_row, split_row
    assert f"s3://{store.bucket}/runs/{rid}/split_data/step.log" in split_row
    assert f"s3://{store.bucket}/runs/{rid}/report/report/" in out
    failed = _cli(capsys, store, "show", "20261201-121500-failed")
    assert "failed at train_expert-r1" in failed and "not run" in failed
    row = next(line for line in failed.splitlines() if line.startswith("train_expert-r1 "))
    assert " incomplete " in row and "train_expert-r1/step.log" in row, row


def test_compare_pairs_on_the_stored_predictions(stored_runs, capsys):
    store, runs, _ = stored_runs
    a, b = "20261201-101500-aaaaaa", "sci-t-s0-cccccc"
    out = _cli(capsys, store, "compare", a, b)
    line = next(x for x in out.splitlines() if x.startswith(b) and "EnsemW2S ensemble" in x and " OOD " in x)

    def correct(rid):
        return {p["id"]: p["correct"] for p in runs[rid]["predictions"]
                if p["model"] == "ensemble" and p["split"] == "hard_test"}

    ca, cb = correct(a), correct(b)
    ids = sorted(ca)
    want = paired_test([cb[i] for i in ids], [ca[i] for i in ids])
    assert f"{want['diff']:+.3f}" in line and f"[{want['ci_low']:+.3f}, {want['ci_high']:+.3f}]" in line, line
    assert f"{want['mcnemar_p']:.3f}" in line.split()[-1]
    assert re.search(rf"^ensemble_acc_ood\s+{runs[a]['metrics']['ensemble_acc_ood']:.3f}\s+"
                     rf"{runs[b]['metrics']['ensemble_acc_ood']:.3f}$", out, re.M), out


def test_compare_of_an_ablation_expands_to_its_runs(stored_runs, capsys):
    store, _, abl = stored_runs
    out = _cli(capsys, store, "compare", "20261201-101500-aaaaaa", abl["base"])
    assert abl["children"][0] in out.splitlines()[0]
    assert abl["children"][1] not in out  # planned, never run: nothing stored to compare


def test_log_prints_the_stored_step_log(stored_runs, capsys):
    store, _, _ = stored_runs
    out = _cli(capsys, store, "log", "20261201-111500-bbbbbb", "train_expert-r2")
    assert "[train_expert-r2] the log of step train_expert-r2 of run 20261201-111500-bbbbbb" in out
    assert f"s3://{store.bucket}/runs/20261201-111500-bbbbbb/train_expert-r2/step.log" in out
    from ensemw2s.cli import main

    assert main(["runs", "log", "--set", f"storage.bucket={store.bucket}", "20261201-111500-bbbbbb",
                 "no-such-step"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no log of step 'no-such-step'") and "train_expert-r2" in err, err


def test_page_writes_the_site_and_uploads_run_pages(stored_runs, capsys, tmp_path):
    store, runs, abl = stored_runs
    out_dir = tmp_path / "site"
    out = _cli(capsys, store, "page", "20261201-101500-aaaaaa", "20261201-111500-bbbbbb", "sci-t-s0-cccccc",
               abl["base"], "-o", str(out_dir))
    index = (out_dir / "index.html").read_text()
    for rid in ("20261201-101500-aaaaaa", "20261201-111500-bbbbbb", "sci-t-s0-cccccc", abl["children"][0]):
        assert f'href="run-{rid}.html"' in index
        page = (out_dir / f"run-{rid}.html").read_text()
        assert page.count("data:image/png;base64,") == 3  # by round, pseudo-label accuracy, step times
        assert store.exists(rid, "report", "page.html"), rid
    assert "Paired differences against 20261201-101500-aaaaaa" in index
    assert "Seeds of one config (mean ± std)" in index  # the two seeds of one config
    assert index.count("data:image/png;base64,") >= 4
    assert f"open {(out_dir / 'index.html').resolve()}" in out
