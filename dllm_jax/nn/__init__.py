"""Layers, attention and the transformer backbone (Flax NNX)."""

from dllm_jax.nn.attention import Attention, KVCache, attention_mask
from dllm_jax.nn.model import abstract_model, apply_model, create_model, param_shardings
from dllm_jax.nn.transformer import Block, Transformer, count_params

__all__ = [
    "Attention",
    "Block",
    "KVCache",
    "Transformer",
    "abstract_model",
    "apply_model",
    "attention_mask",
    "count_params",
    "create_model",
    "param_shardings",
]
