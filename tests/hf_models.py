"""Tiny random Llama / Qwen2 folders built with ``transformers`` (torch), for the import tests.

``build_folder`` writes what ``save_pretrained`` writes, plus a ``tokenizer.json`` trained
here with the ``tokenizers`` package (a byte-level BPE, as Llama 3 / Qwen2 use) and the
``tokenizer_config.json`` that ``transformers.AutoTokenizer`` reads.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

TOKENIZER_VOCAB = 300
EOS = "<|endoftext|>"


@functools.cache
def tokenizer_json() -> str:
    """A byte-level BPE of TOKENIZER_VOCAB tokens trained on this library's own source text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = Path(__file__).resolve().parents[1] / "dllm_jax"
    texts = [p.read_text() for p in sorted(root.rglob("*.py"))]
    if not texts:
        raise FileNotFoundError(f"no training text under {root}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok.to_str()


def hf_config(kind: str, *, vocab: int = 320, tie: bool = False, layers: int = 2, hidden: int = 64,
              heads: int = 4, kv_heads: int = 2, mlp: int = 96, max_pos: int = 128, **extra):
    from transformers import LlamaConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[kind]
    return cls(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
               num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_pos,
               tie_word_embeddings=tie, rms_norm_eps=1e-5, eos_token_id=0, bos_token_id=None,
               pad_token_id=None, **extra)


def build_model(config, seed: int = 0, std: float = 0.15):
    """A causal LM of ``config`` with every parameter drawn N(1 or 0, std): far from uniform logits."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if "norm" in name else 0.0
            p.copy_(base + std * torch.randn_like(p))
    return model.eval()


def build_folder(folder: Path, kind: str, *, seed: int = 0, tokenizer: bool = True, **config_kw):
    """Save a random model (and a tokenizer) into ``folder``; returns the torch model."""
    model = build_model(hf_config(kind, **config_kw), seed)
    model.save_pretrained(folder)
    if tokenizer:
        (folder / "tokenizer.json").write_text(tokenizer_json())
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS}))
    return model


def hf_logits(model, tokens) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()
