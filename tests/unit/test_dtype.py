"""resources.dtype (issue 15, item 2): validation, what ``auto`` resolves to, the run-header line, what reaches
SFT, and that a float32 run keeps the resume keys it had before the setting existed."""
from __future__ import annotations

import pytest

from ensemw2s import modeling
from ensemw2s.config import load_config
from ensemw2s.errors import ConfigError
from ensemw2s.training import sft_precision


def test_config_key_validated_with_the_allowed_values():
    assert load_config(None).resources.dtype == "auto"
    assert load_config(None, ["resources.dtype=float32"]).resources.dtype == "float32"
    with pytest.raises(ConfigError, match=r"resources.dtype: 'fp16' is not allowed; allowed values: auto, float32, "
                                          r"bfloat16"):
        load_config(None, ["resources.dtype=fp16"])
    assert tuple(load_config(None).resources.DTYPES) == modeling.DTYPES


def test_auto_follows_the_device_and_the_cpu_feature(monkeypatch):
    assert modeling.resolve_dtype("float32", "cuda") == "float32"
    assert modeling.resolve_dtype("bfloat16", "cpu") == "bfloat16"
    assert modeling.resolve_dtype("auto", "cuda") == "bfloat16"
    monkeypatch.setattr(modeling, "cpu_bf16_feature", lambda: None)
    assert modeling.resolve_dtype("auto", "cpu") == "float32"
    monkeypatch.setattr(modeling, "cpu_bf16_feature", lambda: "avx512_bf16")
    assert modeling.resolve_dtype("auto", "cpu") == ("bfloat16" if modeling.CPU_AUTO_BF16 else "float32")
    with pytest.raises(ConfigError, match="allowed values: auto, float32, bfloat16"):
        modeling.resolve_dtype("half", "cpu")


def test_cpu_feature_detection_agrees_with_torch():
    import torch

    feature = modeling.cpu_bf16_feature()
    assert feature in (None, "avx512_bf16", "amx_bf16")
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        assert feature is not None


def test_run_header_line(monkeypatch):
    monkeypatch.setattr(modeling, "torch_device", lambda: __import__("torch").device("cpu"))
    monkeypatch.setattr(modeling, "cpu_bf16_feature", lambda: "avx512_bf16")
    cfg = load_config(None)
    line = modeling.describe_dtype(cfg)
    assert line.startswith("precision: ") and "on cpu" in line
    assert ("avx512_bf16" in line) == modeling.CPU_AUTO_BF16
    assert modeling.describe_dtype("float32").startswith("precision: float32 on cpu (set by resources.dtype")
    monkeypatch.setattr(modeling, "cpu_bf16_feature", lambda: None)
    assert "no native bf16" in modeling.describe_dtype(cfg.resources)


def test_resume_keys_unchanged_for_float32(monkeypatch):
    assert modeling.dtype_key("float32") == {}
    assert modeling.dtype_key("bfloat16") == {"dtype": "bfloat16"}
    monkeypatch.setattr(modeling, "cpu_bf16_feature", lambda: None)
    monkeypatch.setattr(modeling, "torch_device", lambda: __import__("torch").device("cpu"))
    assert modeling.dtype_key("auto") == {}  # auto without bf16 = the float32 results, same key


def test_sft_precision():
    assert sft_precision(None, lora=True, cuda=False) == (None, False)  # as before the setting
    assert sft_precision(None, lora=True, cuda=True) == (None, True)
    assert sft_precision("float32", lora=True, cuda=False) == ("float32", False)
    assert sft_precision("bfloat16", lora=True, cuda=False) == ("bfloat16", False)  # bf16 base, fp32 LoRA
    assert sft_precision("bfloat16", lora=False, cuda=False) == ("float32", True)  # fp32 master + autocast
    assert sft_precision("bfloat16", lora=False, cuda=True) == ("bfloat16", True)


def test_load_causal_lm_takes_a_dtype_name(tiny_assets):
    import torch

    model, _ = modeling.load_causal_lm("tiny-weak", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    model, _ = modeling.load_causal_lm("tiny-weak", dtype="float32")
    assert next(model.parameters()).dtype == torch.float32
