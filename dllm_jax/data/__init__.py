"""Data: tokenizers, sources, packing, global batches."""

from dllm_jax.data.synthetic import MarkovChain, batches

__all__ = ["MarkovChain", "batches"]
