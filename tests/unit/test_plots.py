"""ensemw2s.plots: one plot by round for one run (the report step) and for several seeds (the results page)."""
import pytest

from ensemw2s.plots import caption, plot_by_round


def _metrics(shift: float) -> dict:
    return {"ensemble_acc_id_by_round": [0.60 + shift, 0.62 + shift, None],
            "ensemble_acc_ood_by_round": [0.70 + shift, 0.71 + shift, 0.72 + shift],
            "weak_single_acc_id_ll": 0.6 + shift, "weak_single_acc_ood_ll": 0.7 + shift, "n_id": 200, "n_ood": 300}


@pytest.mark.parametrize("n_runs", [1, 3])
def test_plot_by_round_writes_a_png(tmp_path, n_runs):
    path = tmp_path / "by_round.png"
    plot_by_round([_metrics(0.01 * i) for i in range(n_runs)], path)
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 1000
    assert ("95 %" in caption(n_runs)) == (n_runs == 1) and ("std" in caption(n_runs)) == (n_runs > 1)


def test_plot_by_round_copes_with_missing_values(tmp_path):
    plot_by_round([{"n_id": 10}], tmp_path / "empty.png")  # a run without by-round metrics: empty panels
    assert (tmp_path / "empty.png").is_file()
    with pytest.raises(ValueError, match="no run"):
        plot_by_round([], tmp_path / "none.png")


def test_single_expert_line_says_which_single_expert():
    """The dashed line is weak_single: the expert on all easy data under ensemble.single=full (the default),
    the round-1 boosting expert under round1 (issue 25: it was always labelled "round 1")."""
    from ensemw2s.plots import SINGLE_LABELS, single_label

    assert single_label([{"single_definition": "full"}]) == "single expert (all easy data)"
    assert single_label([{"single_definition": "round1"}] * 2) == "single expert (the round-1 expert)"
    assert single_label([{}]) == single_label([{"single_definition": "full"}, {"single_definition": "round1"}]) \
        == SINGLE_LABELS[None]
