"""Noise schedules, noise processes with their ELBOs, and the AR objective."""

from __future__ import annotations

from dllm_jax.config import ModelConfig, NoiseConfig, special_ids
from dllm_jax.diffusion.autoregressive import ARObjective, shift_right
from dllm_jax.diffusion.base import NoiseProcess, Objective, stratified_uniforms, token_nll
from dllm_jax.diffusion.block import BlockDiffusion, noise_process
from dllm_jax.diffusion.hybrid import HybridProcess
from dllm_jax.diffusion.masked import MaskedProcess
from dllm_jax.diffusion.oracle import (
    all_sequences,
    block_oracle_denoiser,
    oracle_denoiser,
    sequence_index,
)
from dllm_jax.diffusion.recipe import Recipe, TimeSampler, training_objective
from dllm_jax.diffusion.schedules import Cosine, LogLinear, Polynomial, Schedule, make_schedule
from dllm_jax.diffusion.uniform import UniformProcess


def make_objective(config: NoiseConfig, num_tokens: int, model: ModelConfig | None = None) -> Objective:
    """The objective a config names, for a model with ``num_tokens`` ordinary tokens.

    Given the ``model``, a block-causal one gets the block NELBO of the process
    (``BlockDiffusion``, BD3-LM) with the model's block size.
    """
    ids = special_ids(num_tokens)
    schedule = make_schedule(config.schedule, config.exponent)
    makers = {
        "masked": lambda: MaskedProcess(num_tokens, schedule, config.t_min, mask_id=ids.mask),
        "uniform": lambda: UniformProcess(num_tokens, schedule, config.t_min),
        "hybrid": lambda: HybridProcess(num_tokens, schedule, config.t_min, mask_id=ids.mask,
                                        p_uniform=config.p_uniform, share=config.uniform_share),
        "ar": lambda: ARObjective(num_tokens, ids.bos if model is None else model.bos_input),
    }
    objective = makers[config.process]()
    if model is not None and model.attention == "block_causal" and config.process != "ar":
        return BlockDiffusion(objective, model.block_size, stagger=config.block_stagger)
    return objective


__all__ = [
    "ARObjective",
    "BlockDiffusion",
    "Cosine",
    "HybridProcess",
    "LogLinear",
    "MaskedProcess",
    "NoiseProcess",
    "Objective",
    "Polynomial",
    "Recipe",
    "Schedule",
    "TimeSampler",
    "UniformProcess",
    "all_sequences",
    "block_oracle_denoiser",
    "make_objective",
    "make_schedule",
    "noise_process",
    "oracle_denoiser",
    "sequence_index",
    "shift_right",
    "stratified_uniforms",
    "token_nll",
    "training_objective",
]
