"""Sampler state, step rules, the scan driver, and KV-cache AR decoding."""

from dllm_jax.sampling.ancestral import (
    MaskedAncestral,
    StaggeredAncestral,
    UniformAncestral,
    ancestral,
)
from dllm_jax.sampling.blocks import BlockDenoiser, run_blocks, sample_blocks
from dllm_jax.sampling.draws import Logits
from dllm_jax.sampling.driver import StepRule, example_keys, run_sampler, sample, time_grid
from dllm_jax.sampling.generate import CACHE_MODES, Generation, generate, resume
from dllm_jax.sampling.guidance import guidance_mix, guided
from dllm_jax.sampling.kv_decode import ar_generate, ar_sample_cached
from dllm_jax.sampling.revise import Revision, correction_rounds, revise
from dllm_jax.sampling.revising import ReMDM, UniformPredictorCorrector
from dllm_jax.sampling.rules import (
    RULE_NAMES,
    CachedMaskedAncestral,
    ConfidenceThreshold,
    EntropyBounded,
    OrderedUnmask,
    make_rule,
)

__all__ = [
    "BlockDenoiser",
    "CACHE_MODES",
    "RULE_NAMES",
    "Revision",
    "correction_rounds",
    "revise",
    "CachedMaskedAncestral",
    "ConfidenceThreshold",
    "EntropyBounded",
    "Generation",
    "Logits",
    "MaskedAncestral",
    "OrderedUnmask",
    "ReMDM",
    "StepRule",
    "StaggeredAncestral",
    "UniformAncestral",
    "UniformPredictorCorrector",
    "ancestral",
    "ar_generate",
    "ar_sample_cached",
    "example_keys",
    "generate",
    "guided",
    "guidance_mix",
    "make_rule",
    "resume",
    "run_blocks",
    "run_sampler",
    "sample_blocks",
    "sample",
    "time_grid",
]
