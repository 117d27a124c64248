"""The expert diagnostics where a person reads them (issue 23 §1): ``runs show``, ``runs compare``, the run page
and the site index, report.md's plot links and the two plots, for a run that recorded them (the hand-computed
3 experts x 5 questions of test_diagnostics.py, through the real ``build_metrics``) and for an older run that
did not (one line saying so)."""
import base64
import importlib.util
import re
from pathlib import Path

import pytest

from ensemw2s import plots, runs, site
from ensemw2s.diagnostics import DIAG_PLOTS, NOT_RECORDED, render_diagnostics
from ensemw2s.evaluation import acc_with_interval, build_metrics, guarded
from ensemw2s.stats import wilson_interval


def _hand_case():
    """test_diagnostics.py's hand-computed case (the suite imports test files by path, not as modules)."""
    spec = importlib.util.spec_from_file_location("_diag_hand_case", Path(__file__).with_name("test_diagnostics.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.hand_predictions


hand_predictions = _hand_case()

EXTRA = {"seed": 0, "rounds": 3, "primary": "loglik", "run_id": "r-diag", "alphas": [1.2, 0.8, 0.5],
         "eps": [0.1, 0.2, 0.3], "eps_prior": [0.4, 0.4, 0.5], "weights_ess": [1.0, 0.9, 0.7],
         "drawn_fraction": [0.63, 0.6, 0.55], "n_id": 5, "n_ood": 5}


def _with_models(preds: list[dict]) -> list[dict]:
    """The hand case plus made-up ensembles and single expert (copies of an expert's answers on the questions
    every expert has in that split)."""
    out = list(preds)
    copies = {"ensemble_r1": "expert_r1", "ensemble_r2": "expert_r2", "ensemble_r3": "expert_r2",
              "ensemble": "expert_r2", "weak_single": "expert_r1"}
    for model, src in copies.items():
        out += [{**p, "model": model} for p in preds if p["model"] == src]
    return out


@pytest.fixture(scope="module")
def with_diag() -> dict:
    return build_metrics(_with_models(hand_predictions()), primary="loglik", extra=EXTRA)


@pytest.fixture(scope="module")
def without_diag() -> dict:
    """A run made before the evaluate step stored each expert alone: no expert_r<t> predictions."""
    preds = [p for p in _with_models(hand_predictions()) if not p["model"].startswith("expert_r")]
    return build_metrics(preds, primary="loglik", extra={**EXTRA, "run_id": "r-old"})


def _rec(m: dict) -> dict:
    return {"run_id": m["run_id"], "kind": "run", "created": "2026-12-01 10:15", "status": "complete",
            "config_summary": "tiny", "summary": None, "metrics": m, "steps": [], "report_uri": None}


def _images(page: str) -> dict:
    """alt -> decoded PNG bytes of each embedded image."""
    return {alt: base64.b64decode(data) for alt, data in
            re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)">', page)}


def test_show_prints_the_diagnostics_compactly(with_diag):
    out = runs.format_show(_rec(with_diag))
    assert "## Expert diagnostics" not in out  # report.md's Markdown section is replaced by aligned columns
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("round "))
    assert "ESS of D_t / n" in lines[head] and "ensemble r1..t OOD" in lines[head]
    # round 2: eps .2, prior .4, alpha .8, ESS .9, drawn .6, r2 alone ID 2/5, OOD 2/5, ensemble r1..2 = r2
    assert lines[head + 3].split() == ["2", "0.200", "0.400", "0.800", "0.900", "0.600", "0.400", "0.400",
                                       "0.400", "0.400"]
    ood = next(line for line in lines if line.startswith("OOD: oracle"))
    assert f"oracle (any expert right) {acc_with_interval(0.75, 5)}" in ood
    assert f"best expert alone {acc_with_interval(0.75, 5)} (r3)" in ood
    assert "mean pairwise disagreement 0.383" in ood
    assert next(line for line in lines if line.lstrip().startswith("ID: oracle")).count("0.600") == 1
    # the matrix: ID then OOD columns; r1's row: · .4 .4 | · .4 .5
    assert next(line for line in lines if line.startswith("r1 ")).split() == ["r1", "·", "0.400", "0.400", "·",
                                                                              "0.400", "0.500"]
    assert "not recorded" not in out


def test_show_says_not_recorded_in_one_line(without_diag):
    out = runs.format_show(_rec(without_diag))
    hits = [line for line in out.splitlines() if "not recorded" in line.lower()]
    assert hits == ["expert diagnostics: " + NOT_RECORDED[0].lower() + NOT_RECORDED[1:]]
    assert "## Expert diagnostics" not in out and "ESS of D_t" not in out


def test_compare_has_mean_disagreement_and_oracle_where_present(with_diag, without_diag):
    recs = [_rec(with_diag), _rec(without_diag)]
    cmp = {"runs": recs, "ref": "r-diag", "method": "loglik", "paired": [],
           "metrics": {k: [guarded(r["metrics"], k) for r in recs] for k in runs.COMPARE_KEYS}}
    out = runs.format_compare(cmp)
    row = next(line for line in out.splitlines() if line.startswith("mean_disagreement_ood "))
    assert row.split()[1:] == ["0.383", "—"]
    assert next(line for line in out.splitlines() if line.startswith("oracle_acc_ood ")).split()[1:] == ["0.750", "—"]
    cmp_old = {**cmp, "runs": recs[1:], "metrics": {k: v[1:] for k, v in cmp["metrics"].items()}}
    assert "mean_disagreement" not in runs.format_compare(cmp_old)  # no row where no run has it
    # the site index: the same, as columns
    page = site.index_page(cmp, [])
    assert "<th>mean disagreement OOD</th>" in page and "<th>oracle OOD</th>" in page
    assert "<th>oracle OOD</th>" not in site.index_page({**cmp_old, "paired": []}, [])


def test_run_page_has_the_diagnostics(with_diag):
    page = site.run_page(_rec(with_diag))
    assert "<h2>Expert diagnostics</h2>" in page
    for cls in ("diag-summary", "diag-rounds", "disagree-id", "disagree-ood"):
        assert f'<table class="{cls}">' in page
    summary = page[page.index('<table class="diag-summary">'):]
    summary = summary[:summary.index("</table>")]
    assert f"{acc_with_interval(0.75, 5)}" in summary and "(r3)" in summary  # oracle OOD, best expert OOD
    assert acc_with_interval(with_diag["ensemble_acc_ood"], 5) in summary
    ood = page[page.index('<table class="disagree-ood">'):]
    assert re.search(r"<td>r2</td><td[^>]*>0\.400</td><td>·</td><td[^>]*>0\.250</td>", ood)
    imgs = _images(page)
    for _, alt in DIAG_PLOTS:
        assert imgs[alt][:4] == b"\x89PNG" and len(imgs[alt]) > 5000, alt
    assert NOT_RECORDED not in page


def test_run_page_says_not_recorded(without_diag):
    page = site.run_page(_rec(without_diag))
    assert "<h2>Expert diagnostics</h2>" in page and NOT_RECORDED in page
    assert "diag-rounds" not in page
    assert not set(_images(page)) & {alt for _, alt in DIAG_PLOTS}
    assert "ensemble accuracy by round" in _images(page)


def test_report_md_links_the_plots(with_diag, without_diag):
    text = "\n".join(render_diagnostics(with_diag))
    for name, alt in DIAG_PLOTS:
        assert f"![{alt}]({name})" in text
    assert "![" not in "\n".join(render_diagnostics(with_diag, plots=()))
    assert "![" not in "\n".join(render_diagnostics(without_diag))


@pytest.mark.parametrize("which", ["with_diag", "without_diag"])
def test_the_plots_are_written(which, request, tmp_path):
    m = request.getfixturevalue(which)
    for plot in (plots.plot_disagreement, plots.plot_expert_accuracy):
        path = tmp_path / f"{plot.__name__}.png"
        plot(m, path)
        assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 5000, plot.__name__


def test_one_run_error_bars_are_wilson_intervals():
    """The by-round plots of one run draw the tables' 95 % Wilson interval (asymmetric, inside [0, 1])."""
    below, above = plots.wilson_errors([0.6, 1.0], 5)
    lo, hi = wilson_interval(0.6, 5)
    assert below[0] == pytest.approx(0.6 - lo) and above[0] == pytest.approx(hi - 0.6)
    assert below[0] != pytest.approx(above[0])
    assert above[1] == 0.0 and below[1] == pytest.approx(1.0 - wilson_interval(1.0, 5)[0]) and below[1] > 0.3
    assert plots.wilson_errors([0.5], None) == [[0.0], [0.0]]  # no n: no bar
    assert "Wilson" in plots.caption(1)
