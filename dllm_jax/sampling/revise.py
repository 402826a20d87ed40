"""``revise``: let a diffusion model correct given text (the editing demo), and the
self-correction rounds run after sampling.

One round at time t: renoise the text to x_t ~ q_t(. | x) (masked: each token masked with
probability beta(t); uniform: replaced by a uniform token; hybrid: either, in the
process's share), then one exact ancestral step t -> 0 with the model. With the exact
denoiser this is a forward-backward move that keeps the data distribution up to the
factorised posterior of one step; with a trained model it moves each token towards what
the model believes, so tokens it finds unlikely in context are rewritten. One network
evaluation per round (counted in ``nfe``). Positions in ``fixed`` are never changed.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dllm_jax.diffusion.base import NoiseProcess
from dllm_jax.diffusion.hybrid import HybridProcess
from dllm_jax.diffusion.masked import MaskedProcess
from dllm_jax.nn.model import apply_model
from dllm_jax.rng import example_keys
from dllm_jax.sampling.ancestral import ancestral
from dllm_jax.sampling.draws import (
    TAG_PRIOR_KIND,
    TAG_RENOISE,
    TAG_RENOISE_TOKEN,
    Logits,
    position_keys,
    randint_BL,
    uniform_BL,
)

REVISE_STEP_BASE = 2**30  # revision rounds draw from steps apart from any sampler's


@dataclasses.dataclass(frozen=True)
class Revision:
    """tokens: (B, L) after the last round; history: (rounds + 1, B, L), the input first;
    changed: (rounds, B) tokens each round changed; nfe: (B,) network evaluations."""

    tokens: np.ndarray
    history: np.ndarray
    changed: np.ndarray
    nfe: np.ndarray


def renoise(process: NoiseProcess, keys_BL, x_BL, t):
    """x_t ~ q_t(. | x) per position from its own keys (batch- and split-invariant)."""
    drop_BL = uniform_BL(keys_BL, TAG_RENOISE) < process.schedule.beta(t)
    noise_BL = randint_BL(keys_BL, TAG_RENOISE_TOKEN, process.num_tokens)
    if isinstance(process, MaskedProcess):
        noise_BL = jnp.full_like(x_BL, process.mask_id)
    elif isinstance(process, HybridProcess):
        uniform = uniform_BL(keys_BL, TAG_PRIOR_KIND) < process.uniform_share(t)[0]
        noise_BL = jnp.where(uniform, noise_BL, process.mask_id)
    return jnp.where(drop_BL, noise_BL, x_BL)


def correction_rounds(denoise, process: NoiseProcess, keys_B, tokens_BL, fixed_BL, rounds: int, t: float,
                      logits: Logits = Logits()):
    """``rounds`` renoise-then-denoise rounds at time ``t`` (traceable).

    Returns:
      (history (rounds + 1, B, L), changed (rounds, B)).
    """
    rule = ancestral(process, logits)
    pos_L = jnp.arange(tokens_BL.shape[1])

    def one(x_BL, r):
        keys_BL = position_keys(keys_B, REVISE_STEP_BASE + r, pos_L)
        x_t = jnp.where(fixed_BL, x_BL, renoise(process, keys_BL, x_BL, t))
        new_BL, _, _ = rule.step(denoise, x_t, jnp.float32(t), jnp.float32(0.0), keys_BL, rule.init_state(x_t))
        new_BL = jnp.where(fixed_BL, x_BL, new_BL)
        return new_BL, (new_BL, jnp.sum(new_BL != x_BL, axis=-1))

    _, (hist, changed) = jax.lax.scan(one, tokens_BL, jnp.arange(rounds))
    return jnp.concatenate([tokens_BL[None], hist]), changed


@functools.partial(jax.jit, static_argnums=(0, 2, 6, 7, 8))
def _revise_jit(graphdef, params, process, keys_B, tokens_BL, fixed_BL, rounds, t, logits):
    denoise = lambda x, t_B: apply_model(graphdef, params, x, t_B)
    return correction_rounds(denoise, process, keys_B, tokens_BL, fixed_BL, rounds, t, logits)


def revise(graphdef, params, tokens, process, *, rounds: int, t: float = 0.1, seed: int = 0, fixed=None,
           logits: Logits = Logits(), indices=None) -> Revision:
    """Let the model correct ``tokens`` (B, L) for ``rounds`` rounds at noise level ``t``.

    Args:
      graphdef, params: a bidirectional diffusion ``Transformer``.
      tokens: (B, L) ordinary token ids (e.g. a sentence with injected typos).
      process: the noise process the model was trained with (masked, uniform or hybrid).
      rounds: number of renoise-denoise rounds (one network evaluation each).
      t: the noise level of each round, in (0, 1): the share of tokens renoised.
      fixed: optional (B, L) bool, positions never changed (e.g. a prompt).
      seed, indices: randomness comes from (seed, indices[b]); indices default to 0..B-1,
        so rows revised in batches give the tokens of one call when each batch passes its
        rows' indices. ``history[n]`` is what ``rounds=n`` returns.

    Raises:
      ValueError: a process that cannot revise (AR), a model that is not bidirectional,
        text longer than the model's context, ids outside the vocabulary, bad rounds or t.
    """
    process = getattr(process, "process", process)  # a block objective: its inner process
    if not isinstance(process, NoiseProcess):
        raise ValueError(f"revise needs a diffusion noise process, got {type(process).__name__}")
    config = nnx.merge(graphdef, params, copy=True).config
    if config.attention != "bidirectional":
        raise ValueError(f"revise needs a bidirectional diffusion model, this one is {config.attention!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    if not (isinstance(t, (int, float)) and 0.0 < t < 1.0):
        raise ValueError(f"t must be a noise level in (0, 1), got {t!r}")
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be a (batch, length) integer array, got shape {tokens.shape}, {tokens.dtype}")
    if tokens.shape[1] > config.max_len:
        raise ValueError(f"text of {tokens.shape[1]} tokens is longer than the model's max_len={config.max_len}")
    if tokens.min() < 0 or tokens.max() >= process.num_tokens:
        raise ValueError(f"tokens must be ordinary ids in [0, {process.num_tokens}), got "
                         f"[{tokens.min()}, {tokens.max()}]")
    fixed = np.zeros(tokens.shape, bool) if fixed is None else np.asarray(fixed, bool)
    if fixed.shape != tokens.shape:
        raise ValueError(f"fixed must have the shape of tokens {tokens.shape}, got {fixed.shape}")
    indices = np.arange(tokens.shape[0]) if indices is None else np.asarray(indices)
    if indices.shape != (tokens.shape[0],) or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"indices must be ({tokens.shape[0]},) integers, got shape {indices.shape}, {indices.dtype}")
    keys_B = example_keys(seed, jnp.asarray(indices))
    hist, changed = _revise_jit(graphdef, params, process, keys_B, jnp.asarray(tokens, jnp.int32),
                                jnp.asarray(fixed), int(rounds), float(t), logits)
    hist, changed = np.asarray(hist), np.asarray(changed)
    return Revision(hist[-1], hist, changed, np.full(tokens.shape[0], rounds, np.int64))
