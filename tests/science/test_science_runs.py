"""The results tooling (`python -m benchmarks.science settings` and `... science`) end to end on the tiny models,
against the real SeaweedFS server; and the two mechanisms it relies on: forking a run (server-side copy) and
input checksums in each step's resume key."""
import json
import re
import sys
from pathlib import Path

import pytest
from s3_fixtures import unique_bucket

from ensemw2s import storage
from ensemw2s.config import load_config

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/ is not installed: the checkout's

pytestmark = pytest.mark.s3


def _tree(root, files):
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_copy_run_copies_complete_artifacts_and_marks_the_fork(store, tmp_path):
    store.put_dir(_tree(tmp_path / "a", {"x.txt": b"x", "d/y.bin": b"yy"}), "src", "step1", "out", producer="step1",
                  config_hash="h1")
    store.put_dir(_tree(tmp_path / "b", {"z.txt": b"z"}), "src", "step2", "out", producer="step2", config_hash="h2")
    # an incomplete artifact (files, no manifest) is not copied
    store.client.put_object(Bucket=store.bucket, Key=store.key("src", "step3", "out", "files", "half.txt"), Body=b"h")
    copied = store.copy_run("src", "dst")
    assert sorted(copied) == ["step1/out", "step2/out"]
    m = store.get_manifest("dst", "step1", "out")
    assert m["forked_from"] == "src" and m["run_id"] == "dst" and m["config_hash"] == "h1"
    store.get_dir("dst", "step1", "out", tmp_path / "back")
    assert (tmp_path / "back" / "d" / "y.bin").read_bytes() == b"yy"
    assert not store.is_complete("dst", "step3", "out")
    with pytest.raises(storage.MissingObjectError, match="missing run: nothing stored under s3://"):
        store.copy_run("no-such-run", "dst2")


def test_a_fork_leaves_out_the_report_until_its_own_report_step_runs(store, s3_env, tmp_path):
    """A fork in progress must not look finished (runs list 'complete', a page reading its metrics)."""
    import dataclasses

    from ensemw2s import local
    from ensemw2s.steps import keys

    for step in (keys.SPLIT_DATA, keys.REPORT):
        store.put_dir(_tree(tmp_path / step, {"f.json": b"{}"}), "fsrc", step, "report" if step == keys.REPORT
                      else "splits", producer=step, config_hash="h")
    cfg = load_config("configs/tiny.yaml")
    cfg = dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, bucket=store.bucket))
    local.fork(cfg, "fsrc", "fdst")
    assert store.is_complete("fdst", keys.SPLIT_DATA, "splits")
    assert not store.is_complete("fdst", keys.REPORT, "report")


def test_resume_key_changes_when_an_input_changes(store, tmp_path, monkeypatch):
    from ensemw2s.config import StorageConfig
    from ensemw2s.steps.stepio import StepIO

    cfg = StorageConfig(bucket=store.bucket)
    store.put_dir(_tree(tmp_path / "u1", {"labels.jsonl": b"v1"}), "r", "up", "labels", producer="up",
                  config_hash="c")
    k1 = StepIO("down", run_id="r", storage=cfg, config_hash="same", inputs=(("up", "labels"),)).config_hash
    k1b = StepIO("down", run_id="r", storage=cfg, config_hash="same", inputs=(("up", "labels"),)).config_hash
    store.put_dir(_tree(tmp_path / "u2", {"labels.jsonl": b"v2"}), "r", "up", "labels", producer="up",
                  config_hash="c")
    k2 = StepIO("down", run_id="r", storage=cfg, config_hash="same", inputs=(("up", "labels"),)).config_hash
    assert k1 == k1b and k1 != k2
    missing = StepIO("down", run_id="r", storage=cfg, config_hash="same", inputs=(("nope", "x"),)).config_hash
    assert missing not in (k1, k2)


def test_bench_settings_on_tiny_models(repo_root, tiny_assets, tmp_path):
    from benchmarks.science.prestudy import prestudy

    out = tmp_path / "prestudy.json"
    book = prestudy(str(repo_root / "configs/tiny.yaml"), ["arc_easy-sciq"], overrides=[], variant="tiny", out=out,
                    work=tmp_path / "work")
    e = book["entries"]["arc_easy-sciq|tiny"]
    n = e["n_ood"]
    assert n == 12 and e["ids"] and len(e["correct"]["ceiling"]) == n
    assert set(e["acc"]) == {"weak_zeroshot", "weak", "strong_zeroshot", "ceiling"}
    assert e["weak_definition"].startswith("single") and e["min_gap"] == pytest.approx(0.08)
    assert isinstance(e["qualifies"], bool) and e["chance"] == pytest.approx(0.25)
    assert e["acc"]["weak"] == pytest.approx(sum(e["correct"]["weak"]) / n)
    assert e["machine"]["cpu_count"] >= 1  # the page states the machine from this record
    # a second call with the same config keeps the entry instead of recomputing it
    again = prestudy(str(repo_root / "configs/tiny.yaml"), ["arc_easy-sciq"], overrides=[], variant="tiny", out=out,
                     work=tmp_path / "work")
    assert again["entries"]["arc_easy-sciq|tiny"]["date"] == e["date"]
    with pytest.raises(Exception, match="unknown setting"):
        prestudy(str(repo_root / "configs/tiny.yaml"), ["nope"], overrides=[], variant="x", out=out)


def test_bench_science_one_seed_and_a_forked_ablation(repo_root, tiny_assets, s3_env, tmp_path):
    from benchmarks.science.page import science

    bucket = unique_bucket()
    abl = tmp_path / "abl.yaml"
    tiny = repo_root / "configs/tiny.yaml"
    abl.write_text(f"base: {tiny}\ngrid:\n  ensemble.pseudo_label_mode: [generate]\nseeds: [0]\nfork_from: base\n")
    out = tmp_path / "results.md"
    ov = [f"storage.bucket={bucket}", "ensemble.select_rounds=val", "data.prompt=rc",
          "ensemble.pseudo_label_mode=options"]
    rc = science(str(tiny), ov, seeds=1, jobs=1, tag="t", ablations=str(abl), run=True, out=out,
                 log_dir=tmp_path / "logs")
    assert rc == 0
    page = out.read_text()
    for section in ("## Pre-study", "## Main results (mean ± std over 1 seeds)", "## Paired differences",
                    "## The paper's headline claims", "## Ablations (seed 0, forked from the seed-0 main run)",
                    "## Wall time"):
        assert section in page, section
    assert re.search(r"\| EnsemW2S ensemble \(T chosen on easy_val\) \| \d\.\d{3} ± 0\.000 \|", page)
    assert "| g00-generate | `ensemble.pseudo_label_mode=generate` |" in page and "**missing**" not in page
    # facts come from the run records: the machine the run summary recorded, the stored config's models
    assert re.search(r"machine: \d+ CPU cores, (no GPU|\d+ × [^;]+);", page), page
    from ensemw2s.assets import model_display_name

    assert f"Weak experts: {model_display_name('tiny-weak')}; strong student: {model_display_name('tiny-strong')}." in page
    assert (tmp_path / "results" / "ensemble_by_round.png").stat().st_size > 1000
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == sorted(
        f"{r}.log" for r in storage.Store.from_config(load_config(str(tiny), ov).storage).list_runs())
    summary = json.loads((tmp_path / "results" / "science.json").read_text())
    main_id = summary["runs"][0]["run_id"]
    assert summary["runs"][0]["metrics"]["chosen_rounds"] in (1, 2)
    assert summary["runs"][0]["correct"]["models"]["ensemble"]["hard_test"]  # per-question record kept
    # the rc prompt form travelled with the rows into the stored splits and pseudo-labels
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        st0 = storage.Store.from_config(load_config(str(tiny), ov).storage)
        st0.get_dir(main_id, "pseudo_label-ensemble", "labels", f"{tmp}/l")
        labels = [json.loads(x) for x in open(f"{tmp}/l/labels.jsonl")]
    assert labels and all(r["prompt"] == "rc" and r["chosen"] is not None for r in labels)
    # the ablation was forked: upstream steps restored, the changed pseudo-labels and what follows recomputed
    st = storage.Store.from_config(load_config(str(tiny), ov).storage)
    abl_id = [r for r in st.list_runs() if r != main_id][0]
    timing = {s: st.get_json(abl_id, s, "timing.json") for s in st.list_steps(abl_id) if s != "run-summary"}
    restored = {s for s, t in timing.items() if t["restored"]}
    assert {"split_data", "train_expert-r1", "update_weights-r2", "evaluate-experts", "pseudo_label-gold",
            "train_student-gold"} <= restored
    assert {"pseudo_label-ensemble", "train_student-ensemble", "evaluate-student-ensemble", "report"}.isdisjoint(
        restored)
    # a forked step keeps the timing of the source run's execution that computed it
    src_timing = st.get_json(main_id, "train_expert-r1", "timing.json")
    want = src_timing["produced"] if src_timing["restored"] else src_timing
    got = timing["train_expert-r1"]["produced"]
    assert {k: got[k] for k in want} == want and got["forked_from"] == main_id and got["work_seconds"] > 0

    # --no-run rebuilds the same page from science.json once the object store no longer holds the runs
    for r in st.list_runs():
        st.delete_run(r)
    assert science(str(tiny), ov, seeds=1, jobs=1, tag="t", ablations=str(abl), run=False, out=out) == 0
    again = out.read_text()
    assert "from the run records kept in" in again

    def numbers(text):  # every line but the title (date) and the provenance line (where the records came from)
        return [x for x in text.splitlines() if not x.startswith(("# Does EnsemW2S", "- Page built"))]

    assert numbers(again) == numbers(page)
