"""split_data's resume key: the experts' training settings count only when crossfit difficulty fine-tunes them."""
import pytest

from ensemw2s.config import DataConfig, LoraConfig, ModelSection
from ensemw2s.steps import split_data


class _Stop(Exception):
    pass


def _key(monkeypatch, data: DataConfig, weak: ModelSection) -> str:
    seen = {}

    def fake_stepio(step, **kw):
        seen["hash"] = kw["config_hash"]
        raise _Stop

    monkeypatch.setattr(split_data, "StepIO", fake_stepio)
    with pytest.raises(_Stop):
        split_data.run(data, weak, seed=0, splits_dir="s", state_dir="t")
    return seen["hash"]


@pytest.mark.parametrize("difficulty, moves", [("crossfit", True), ("model_loss", False)])
def test_lora_settings_in_the_key_only_under_crossfit(monkeypatch, difficulty, moves):
    data = DataConfig(easy="sciq", hard="sciq", difficulty=difficulty)
    a = _key(monkeypatch, data, ModelSection(lora=LoraConfig(r=16)))
    b = _key(monkeypatch, data, ModelSection(lora=LoraConfig(r=8)))
    assert (a != b) is moves
