"""Sampler state, step rules and the scan driver."""

from dllm_jax.sampling.ancestral import MaskedAncestral, UniformAncestral, ancestral
from dllm_jax.sampling.driver import StepRule, example_keys, run_sampler, sample, time_grid

__all__ = [
    "MaskedAncestral",
    "StepRule",
    "UniformAncestral",
    "ancestral",
    "example_keys",
    "run_sampler",
    "sample",
    "time_grid",
]
