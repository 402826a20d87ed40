"""Sampler state, step rules, the scan driver, and KV-cache AR decoding."""

from dllm_jax.sampling.ancestral import MaskedAncestral, UniformAncestral, ancestral
from dllm_jax.sampling.driver import StepRule, example_keys, run_sampler, sample, time_grid
from dllm_jax.sampling.kv_decode import ar_sample_cached

__all__ = [
    "MaskedAncestral",
    "StepRule",
    "UniformAncestral",
    "ancestral",
    "ar_sample_cached",
    "example_keys",
    "run_sampler",
    "sample",
    "time_grid",
]
