"""What a run says about itself (issue 24): accuracies with their 95 % Wilson interval, a PGR only where the
paired ceiling − weak gap is above 0 beyond noise, one plain verdict per comparison, and the same decision on
every surface (report.md, the HTML page, ``runs list`` / ``compare``)."""
from __future__ import annotations

import pytest

from ensemw2s import evaluation as ev
from ensemw2s import runs, site
from ensemw2s.stats import wilson_interval

N = 100


def _preds(correct: dict[str, int], n: int = N, split: str = "hard_test") -> list[dict]:
    """Per model, the first ``correct[model]`` questions right: a model with more right questions is right on
    every question a model with fewer is (nested), so the paired differences are all one way."""
    return [{"id": f"q{i:03d}", "model": m, "split": split, "method": "loglik", "output": "A", "chosen": 0,
             "correct": i < k} for m, k in correct.items() for i in range(n)]


def _metrics(correct: dict[str, int], **extra) -> dict:
    preds = _preds(correct) + _preds(correct, split="easy_test")
    m = ev.build_metrics(preds, primary="loglik", extra={"n_id": N, "n_ood": N, **extra})
    return m


def test_wilson_interval_by_hand():
    # 41 of 100: centre (0.41 + z²/200) / (1 + z²/100), half-width z/(1 + z²/100) · sqrt(0.41·0.59/100 + z²/40000)
    lo, hi = wilson_interval(0.41, 100)
    assert (lo, hi) == (pytest.approx(0.31868, abs=5e-5), pytest.approx(0.50799, abs=5e-5))
    assert wilson_interval(0.0, 20)[0] == 0.0 and wilson_interval(0.0, 20)[1] > 0.1  # not degenerate at 0 / n
    assert wilson_interval(1.0, 20)[1] == pytest.approx(1.0) and wilson_interval(1.0, 20)[0] < 0.9
    with pytest.raises(ValueError, match="n must be >= 1"):
        wilson_interval(0.5, 0)


def test_accuracy_cell_formats():
    assert ev.acc_with_interval(0.41, 100) == "0.410 [0.319, 0.508]"
    assert ev.acc_with_interval(0.41, None) == "0.410"
    assert ev.acc_with_interval(None, 100) == "—"


def test_pgr_shown_on_a_clear_gap():
    m = _metrics({"weak_single": 30, "ensemble": 30, "student_single": 50, "student_ensemble": 50, "ceiling": 70})
    lo = m["paired_ceiling_minus_single_ood_ci_low"]
    assert m["paired_ceiling_minus_single_ood_diff"] == pytest.approx(0.40) and lo > 0
    value, line = ev.pgr_shown(m, "pgr_single")
    assert value == pytest.approx(0.5)  # (0.50 - 0.30) / (0.70 - 0.30)
    assert line.startswith("PGR_single = 0.500 (OOD; gap ceiling − weak_single = +0.400 [")
    assert ev.guarded(m, "pgr_single") == pytest.approx(0.5)
    assert not ev.no_gap(m)


@pytest.mark.parametrize("weak, ceiling", [(49, 50), (50, 50), (50, 45)])
def test_pgr_withheld_when_the_gap_is_noise(weak, ceiling):
    m = _metrics({"weak_single": weak, "ensemble": weak, "student_single": 40, "student_ensemble": 45,
                  "ceiling": ceiling})
    # the unguarded number exists (and is the kind of nonsense issue 24 saw: -16.0 for a one-question gap)
    assert m["pgr_single"] is not None or ceiling <= weak
    gap = (m["paired_ceiling_minus_single_ood_diff"], m["paired_ceiling_minus_single_ood_ci_low"],
           m["paired_ceiling_minus_single_ood_ci_high"])
    assert gap[1] <= 0
    value, line = ev.pgr_shown(m, "pgr_single")
    assert value is None
    assert line == (f"PGR_single: no gap to recover (ceiling − weak_single = {gap[0]:+.3f} [{gap[1]:+.3f}, "
                    f"{gap[2]:+.3f}], OOD, n={N})")
    assert ev.guarded(m, "pgr_single") == ev.NO_GAP and ev.guarded(m, "pgr_ens") == ev.NO_GAP
    assert ev.no_gap(m)


def test_pgr_without_a_ceiling_or_recorded_gap():
    assert ev.pgr_shown({}, "pgr_ens") == (None, "PGR_ens: no ceiling in this run")
    assert ev.guarded({}, "pgr_ens") is None
    old = {"ceiling_acc_ood": 0.6, "pgr_ens": 0.25}  # a run stored before the ceiling gaps were recorded
    value, line = ev.pgr_shown(old, "pgr_ens")
    assert value is None and "not recorded for this run (unguarded value 0.250)" in line
    assert ev.guarded(old, "weak_single_acc_ood") is None and ev.guarded({"x": 1}, "x") == 1


def test_verdict_sentences():
    m = _metrics({"weak_single": 41, "ensemble": 41, "student_single": 30, "student_ensemble": 60, "ceiling": 41})
    lines = ev.verdict_lines(m)
    d = {ln.split(":")[0]: ln for ln in lines}
    assert d["ensemble vs single expert (OOD)"] == (
        f"ensemble vs single expert (OOD): no difference detectable at n={N} (+0.000 [+0.000, +0.000])")
    stu = d["student←ensemble vs student←single (OOD)"]
    assert stu.startswith("student←ensemble vs student←single (OOD): the first is better: +0.300 [")
    assert d["ceiling vs single expert (OOD)"].startswith("ceiling vs single expert (OOD): no difference detectable")
    worse = ev.verdict_lines(_metrics({"weak_single": 60, "ensemble": 30, "ceiling": 90}))
    assert any(ln.startswith("ensemble vs single expert (OOD): the first is worse: -0.300 [") for ln in worse)
    assert any(ln.startswith("ceiling vs single expert (ID): a gap to recover: +0.300 [") for ln in worse)


def test_every_surface_shows_the_guarded_pgr(tmp_path):
    m = _metrics({"weak_single": 49, "ensemble": 49, "student_single": 48, "student_ensemble": 45, "ceiling": 50},
                 weak_model="w", strong_model="s", rounds=1, alphas=[1.0])
    assert m["pgr_single"] == pytest.approx(-1.0)  # (0.48 - 0.49) / (0.50 - 0.49): the unguarded number
    report = ev.render_report(m)
    assert "| weak single expert (the baseline) | 0.490 [0.394, 0.587] | 0.490 [0.394, 0.587] |" in report
    assert "- PGR_single: no gap to recover (ceiling − weak_single = +0.010 [" in report
    assert "PGR_single = " not in report and "-1.000" not in report
    assert f"ensemble vs single expert (OOD): no difference detectable at n={N} (+0.000 [+0.000, +0.000])" in report
    assert ev.NO_GAP_HINT in report and "configs/science_1p5b.yaml" in report
    page = "\n".join(site.results_section(m))
    assert "PGR_single: no gap to recover (ceiling − weak_single = +0.010 [" in page and "0.490 [0.394, 0.587]" in page
    assert "ensemble vs single expert (OOD): no difference detectable" in page
    rec = {"run_id": "r1", "created": "2026-12-07 02:00", "status": "succeeded", "metrics": m, "config_summary": "c"}
    listing = runs.format_list([rec])
    assert " no gap " in listing.splitlines()[-1] and "-1.000" not in listing
    clear = _metrics({"weak_single": 30, "ensemble": 30, "student_single": 50, "student_ensemble": 50, "ceiling": 70})
    assert " 0.500 " in runs.format_list([{**rec, "metrics": clear}]).splitlines()[-1]


def test_clear_gap_without_a_student_is_not_called_no_gap():
    m = _metrics({"weak_single": 30, "ensemble": 30, "ceiling": 70})  # no students trained
    value, line = ev.pgr_shown(m, "pgr_single")
    assert value is None and line.startswith("PGR_single: no student in this run (gap ceiling − weak_single = +0.400")
    assert ev.guarded(m, "pgr_single") is None
