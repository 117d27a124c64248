"""``lora.layers``: adapters on the top N decoder layers only, and the backward stops at the lowest of them."""
import pytest
from tests.tiny_models import make_model, make_tokenizer

from ensemw2s.config import LoraConfig
from ensemw2s.errors import ModelError
from ensemw2s.training import apply_lora


def _deep_model(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    cfg = make_model(tok, 0).config.to_dict()
    cfg.update(num_hidden_layers=layers)
    return tok, LlamaForCausalLM(LlamaConfig(**cfg))


def _adapted_layers(model) -> set[int]:
    return {int(n.split(".layers.")[1].split(".")[0]) for n, p in model.named_parameters()
            if "lora_" in n and p.requires_grad}


def test_top_layers_only_and_no_gradient_below_them():
    import torch

    tok, model = _deep_model(4)
    peft_model = apply_lora(model, LoraConfig(r=4, alpha=8, layers=2))
    assert _adapted_layers(peft_model) == {2, 3}
    seen = {}
    hooks = [layer.register_full_backward_hook(lambda m, gi, go, i=i: seen.__setitem__(i, True))
             for i, layer in enumerate(peft_model.base_model.model.model.layers)]
    ids = torch.tensor([tok("a question Answer: yes")["input_ids"]])
    peft_model.train()
    peft_model(input_ids=ids, labels=ids).loss.backward()
    for h in hooks:
        h.remove()
    assert set(seen) == {2, 3}  # the backward pass never ran through layers 0 and 1


def test_all_layers_by_default_and_too_many_layers_refused():
    _, model = _deep_model(3)
    assert _adapted_layers(apply_lora(model, LoraConfig(r=4, alpha=8))) == {0, 1, 2}
    _, model = _deep_model(3)
    with pytest.raises(ModelError, match="lora.layers: 5 is out of range; LlamaForCausalLM has 3 decoder layers"):
        apply_lora(model, LoraConfig(r=4, alpha=8, layers=5))
