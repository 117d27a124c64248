"""ensemw2s.ablation: the one ablation format (nightly grid and results page): base as a path, fork_from,
point overrides, and the configs shipped in configs/."""
import pytest

from ensemw2s.ablation import ablation_from_dict, load_ablation
from ensemw2s.config import ConfigError, load_config


def test_base_may_name_a_config_file_relative_to_the_ablation_file(tmp_path):
    (tmp_path / "main.yaml").write_text("seed: 3\nboosting: {rounds: 2, alpha_rule: prior}\n")
    f = tmp_path / "abl.yaml"
    f.write_text("base: main.yaml\ngrid:\n  boosting.alpha_rule: [samme, prior]\n")
    ab = load_ablation(f)
    assert ab.base.boosting.rounds == 2 and ab.seeds == [3] and ab.fork_from is None
    assert [p.cfg.boosting.alpha_rule for p in ab.points] == ["samme", "prior"]
    assert [p.overrides(ab.base) for p in ab.points] == [["boosting.alpha_rule=samme"], []]
    assert ab.points[1].overrides() == ["boosting.alpha_rule=prior"]
    f.write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"base: config file not found: .*nowhere.yaml"):
        load_ablation(f)
    f.write_text("base: 3\n")
    with pytest.raises(ConfigError, match="'base' must be a mapping of config sections or the path"):
        load_ablation(f)


def test_fork_from_is_validated_and_settable():
    ab = ablation_from_dict({"grid": {"boosting.rounds": [1]}, "fork_from": "base"})
    assert ab.fork_from == "base"
    assert ablation_from_dict({"grid": {"boosting.rounds": [1]}}, ["fork_from=base"]).fork_from == "base"
    with pytest.raises(ConfigError, match=r"fork_from: 'seed0' is not allowed; allowed values: base"):
        ablation_from_dict({"fork_from": "seed0"})
    with pytest.raises(ConfigError, match="unknown key.*'fork'.*allowed keys: base, grid, seeds, parallelism, "
                                          "fork_from"):
        ablation_from_dict({"grid": {}, "fork": "base"})


def test_override_values_survive_the_set_syntax():
    ab = ablation_from_dict({"grid": {"data.easy,data.hard": [["arc_easy", "sciq"]], "experts.train.lr": [1e-4],
                                      "eval.generation": [True]}})
    items = ab.points[0].overrides()
    assert items == ["data.easy=arc_easy", "data.hard=sciq", "experts.train.lr=0.0001", "eval.generation=true"]
    assert load_config(None, items) == ab.points[0].cfg


def test_the_shipped_ablation_configs_load(repo_root):
    grid = load_ablation(repo_root / "configs" / "ablations.yaml")
    assert len(grid.points) == 24 and grid.fork_from is None
    sci = load_ablation(repo_root / "configs" / "science_ablations.yaml")
    main = load_config(str(repo_root / "configs" / "science.yaml"))
    assert sci.base == main and sci.seeds == [0] and sci.fork_from == "base"
    assert [p.overrides(main) for p in sci.points] == [["boosting.alpha_rule=samme"], ["boosting.sampling=weighted"],
                                                       ["ensemble.pseudo_label_mode=generate"]]


def test_the_cluster_pipeline_refuses_fork_from():
    from pipelines.ablations import build_ablation_pipeline

    with pytest.raises(ConfigError, match="fork_from: 'base' is not supported by the cluster ablation pipeline"):
        build_ablation_pipeline(ablation_from_dict({"fork_from": "base"}), for_cluster=False)
