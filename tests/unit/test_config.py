"""Config loading: defaults < YAML < --set; every error names the key and what is allowed."""
import pytest

from ensemw2s.config import BoostingConfig, ConfigError, load_config, section_from_json, section_to_json


def test_defaults_and_repo_configs_validate(repo_root):
    for name in ("default", "tiny", "arc_challenge"):
        cfg = load_config(repo_root / "configs" / f"{name}.yaml")
        assert cfg.boosting.rounds >= 1


def test_override_types_parse(repo_root):
    cfg = load_config(repo_root / "configs/tiny.yaml", ["boosting.rounds=5", "student.lora.enabled=false",
                                                         "experts.train.lr=1e-4"])
    assert cfg.boosting.rounds == 5 and cfg.student.lora.enabled is False and cfg.experts.train.lr == 1e-4


@pytest.mark.parametrize("override, message", [
    ("boosting.roundz=3", "unknown config key 'boosting.roundz'; allowed keys in boosting: rounds"),
    ("boosting.rounds=0", "boosting.rounds: 0 is out of range"),
    ("boosting.rounds=two", "boosting.rounds: expected an integer"),
    ("boosting.alpha_rule=adaboost", "allowed values: binary, prior, samme, uniform"),
    ("boosting.sampling=bootstrap", "allowed values: resample, weighted"),
    ("experts.train.lr=-1", "experts.train.lr: -1.0 is out of range"),
    ("experts.train.batch_size=0", "experts.train.batch_size: 0 is out of range"),
    ("experts.model=", "experts.model: must be a non-empty string"),
    ("data.easy=imagenet", "data.easy: 'imagenet' is not allowed; allowed values: arc, arc_challenge"),
    ("ensemble.combine=max", "allowed values: prob, vote"),
    ("storage.endpoint=ftp://x", "storage.endpoint"),
    ("data.difficulty=column", "data.difficulty_column: required"),
    ("ensemble.single=best", "ensemble.single: 'best' is not allowed; allowed values: full, round1"),
    ("student.lora.layers=-2", "student.lora.layers: -2 is out of range; it must be >= 0"),
    ("boosting.reuse_single=maybe", "boosting.reuse_single: expected true or false"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=None) as exc:
        load_config(None, [override])
    assert message in str(exc.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "evil.yaml"
    bad.write_text("boosting: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_section_json_round_trip():
    b = BoostingConfig(rounds=4, alpha_rule="samme")
    assert section_from_json(BoostingConfig, section_to_json(b), "boosting") == b


def test_configs_point_only_at_files_in_the_repository():
    """A file a shipped config names in its comments (a doc, another config) is in the repository (issue 25:
    configs/default.yaml pointed at shared/FEASIBILITY.md, which a clone does not have)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    missing = []
    for cfg in sorted((root / "configs").glob("*.yaml")):
        for ref in set(re.findall(r"[A-Za-z0-9_./-]+\.(?:md|yaml|py|jsonl)\b", cfg.read_text())):
            if not ((root / ref).exists() or (cfg.parent / ref).exists()):
                missing.append(f"{cfg.name}: {ref}")
    assert not missing
