"""Tiny random-init causal LMs and a character tokenizer for unit tests (never for results).

One home for the builders the ensemble and benchmark-correctness tests share: a word-level tokenizer with one
token per character (``<bos>`` prepended, Gemma-style) and a 2-layer Llama whose weights depend only on the
seed.
"""
from __future__ import annotations

import string

CHARS = string.ascii_letters + string.digits + " .,?!:;'-\n()"


def make_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + list(CHARS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # one token per character, newlines included ((?m) so "." matches them too)
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    # Gemma-style: add_special_tokens=True prepends BOS
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")


def make_model(tok, seed: int, vocab_size: int | None = None):
    """A 2-layer Llama (hidden 32) in eval mode; ``initializer_range`` 0.1, peakier than the default 0.02, so
    argmaxes are clear and outputs varied."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size or len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.1, tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, attn_implementation="eager")
    return LlamaForCausalLM(cfg).eval()


def make_lora_adapters(build_base, out_dir, k: int, *, std: float = 0.3, r: int = 4, seed: int = 100) -> list[str]:
    """``k`` LoRA adapters (all projections, ``lora_B ~ N(0, std)`` so the experts differ) of the model
    ``build_base()`` returns, saved under ``out_dir/adapter_<i>``; returns the folders."""
    from pathlib import Path

    import torch
    from peft import LoraConfig, get_peft_model

    dirs = []
    for i in range(k):
        torch.manual_seed(seed + i)
        model = get_peft_model(build_base(), LoraConfig(
            r=r, lora_alpha=2 * r, lora_dropout=0.0, task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, std)
        d = Path(out_dir) / f"adapter_{i}"
        model.save_pretrained(d)
        dirs.append(str(d))
    return dirs
