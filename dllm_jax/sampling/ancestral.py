"""Ancestral step rules: exact draws from the process's reverse posterior.

Each position is updated independently given x_t, from the model's marginal posterior of
the clean token. Masked: decide "unmask or not" first, then draw the token — never a joint
draw over "stay masked" + V tokens, whose float32 Gumbel noise truncates the tail.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dllm_jax.diffusion.block import BlockDiffusion, noise_process
from dllm_jax.diffusion.hybrid import HybridProcess
from dllm_jax.diffusion.masked import MaskedProcess
from dllm_jax.diffusion.uniform import UniformProcess
from dllm_jax.sampling.draws import (
    TAG_TOKEN,
    TAG_UNMASK,
    Logits,
    categorical_BL,
    uniform_BL,
)
from dllm_jax.sampling.driver import StepRule


def times_B(batch, t):
    return jnp.full((batch,), t, jnp.float32)


def unmask_probability(process: MaskedProcess, t, s):
    """(alpha_s - alpha_t) / (1 - alpha_t): a masked position's chance to unmask from t to s
    (1 where alpha_t = 1: a staggered position whose window has passed). Times are scalars
    or per position."""
    a_t, a_s = process.schedule.alpha(t), process.schedule.alpha(s)
    return jnp.where(a_t < 1.0, (a_s - a_t) / (1.0 - a_t), 1.0)


def masked_ancestral_update(process, logits_BLV, tokens_BL, t, s, keys_BL, logits: Logits):
    """One two-stage ancestral update of the masked positions (shared with the cached rule).

    The token draw (one pass over V at every position) is skipped when no position
    unmasks, which is most steps when K >> L; it reads the same keys either way. With the
    default ``Logits`` it reads the raw logits (the draw normalises them itself).
    """
    reveal_BL = uniform_BL(keys_BL, TAG_UNMASK) < unmask_probability(process, t, s)
    reveal_BL &= tokens_BL == process.mask_id

    def draw():
        tok_BL = categorical_BL(keys_BL, TAG_TOKEN, logits_BLV if logits.is_identity else logits(logits_BLV))
        return jnp.where(reveal_BL, tok_BL, tokens_BL)

    return jax.lax.cond(jnp.any(reveal_BL), draw, lambda: tokens_BL)


@dataclasses.dataclass(frozen=True)
class MaskedAncestral(StepRule):
    """MDLM/MD4 ancestral step: each masked position unmasks with probability
    (alpha_s - alpha_t) / (1 - alpha_t), to a token drawn from the (processed) denoiser."""

    process: MaskedProcess
    logits: Logits = Logits()

    def step(self, denoise, tokens_BL, t, s, keys_BL, state):
        batch = tokens_BL.shape[0]
        logits_BLV = denoise(tokens_BL, times_B(batch, t))
        new_BL = masked_ancestral_update(self.process, logits_BLV, tokens_BL, t, s, keys_BL, self.logits)
        return new_BL, jnp.ones((batch,), jnp.int32), state


def uniform_posterior_logits(process: UniformProcess, probs_BLV, tokens_BL, t, s):
    """Log of p(x_s = j | x_t = x) ∝ q_{t|s}(x | j) (alpha_s w_j + beta_s W), per position.

    With w_a = p_a beta_t / q_t(x | a) and W = sum_a w_a, beta = (1 - alpha) / V.
    """
    V = process.num_tokens
    a_t, a_s = process.schedule.alpha(t), process.schedule.alpha(s)
    beta_t, beta_s = process.schedule.beta(t) / V, process.schedule.beta(s) / V
    is_x = jax.nn.one_hot(tokens_BL, V, dtype=bool)
    w = jnp.where(is_x, probs_BLV * beta_t / (beta_t + a_t), probs_BLV)
    mix = a_s * w + beta_s * jnp.sum(w, axis=-1, keepdims=True)
    a_ts = a_t / a_s
    back = jnp.where(is_x, a_ts, 0.0) + (1.0 - a_ts) / V  # q(x_t = x | x_s = j)
    return jnp.log(back * mix)


@dataclasses.dataclass(frozen=True)
class UniformAncestral(StepRule):
    """Uniform-process ancestral step: x_s^l ~ sum_a p(a | x_t) q(x_s^l | x_t^l, x_0^l = a).

    Every position may change at every step: written tokens are revised.
    """

    process: UniformProcess
    logits: Logits = Logits()

    def step(self, denoise, tokens_BL, t, s, keys_BL, state):
        batch = tokens_BL.shape[0]
        logits_BLV = self.logits(denoise(tokens_BL, times_B(batch, t)))
        post = uniform_posterior_logits(self.process, jnp.exp(logits_BLV), tokens_BL, t, s)
        return categorical_BL(keys_BL, TAG_TOKEN, post), jnp.ones((batch,), jnp.int32), state


def hybrid_update(process: HybridProcess, logp_BLV, tokens_BL, t, s, keys_BL, offset: int = 0):
    """One exact hybrid reverse step t -> s per position, drawn in two stages: stay (or
    become) the mask with probability P(mask), else a token from the token part."""
    p_mask_BL1, tok_BLV = process.posterior(jnp.exp(logp_BLV), tokens_BL, t, s)
    masked_BL = uniform_BL(keys_BL, TAG_UNMASK + offset) < p_mask_BL1[..., 0]
    tok_BL = categorical_BL(keys_BL, TAG_TOKEN + offset, jnp.log(tok_BLV))
    return jnp.where(masked_BL, process.mask_id, tok_BL)


@dataclasses.dataclass(frozen=True)
class HybridAncestral(StepRule):
    """Hybrid-process ancestral step: x_s^l ~ sum_a p(a | x_t) q(x_s^l | x_t^l, x_0^l = a).

    Masks unmask, and unmasked tokens (which may be uniform noise) are revised.
    """

    process: HybridProcess
    logits: Logits = Logits()

    def step(self, denoise, tokens_BL, t, s, keys_BL, state):
        batch = tokens_BL.shape[0]
        logp_BLV = self.logits(denoise(tokens_BL, times_B(batch, t)))
        new_BL = hybrid_update(self.process, logp_BLV, tokens_BL, t, s, keys_BL)
        return new_BL, jnp.ones((batch,), jnp.int32), state


@dataclasses.dataclass(frozen=True)
class StaggeredAncestral(MaskedAncestral):
    """The masked ancestral step of a staggered block objective (``BlockDiffusion.stagger``):
    block position j unmasks from t to s with probability (alpha(tau_j(s)) - alpha(tau_j(t)))
    / (1 - alpha(tau_j(t))), its own clock's. The canvas is whole blocks from a block start
    (the block loop's chunks). With stagger 1 and K = block size steps it is AR sampling."""

    objective: BlockDiffusion | None = None

    def __post_init__(self):
        if not isinstance(self.objective, BlockDiffusion) or not self.objective.stagger:
            raise ValueError(f"StaggeredAncestral needs a staggered BlockDiffusion objective (its clocks), "
                             f"got {self.objective!r}; use ancestral(objective)")

    def step(self, denoise, tokens_BL, t, s, keys_BL, state):
        batch, length = tokens_BL.shape
        C = self.objective.block_size
        if length % C:
            raise ValueError(f"a staggered block rule steps whole blocks: canvas length {length} is not a "
                             f"multiple of block_size={C}")
        tau_t, tau_s = (jnp.tile(self.objective.stagger_times(jnp.full((1,), x, jnp.float32))[0][0], length // C)
                        for x in (t, s))
        logits_BLV = denoise(tokens_BL, times_B(batch, t))
        new_BL = masked_ancestral_update(self.process, logits_BLV, tokens_BL, tau_t, tau_s, keys_BL, self.logits)
        return new_BL, jnp.ones((batch,), jnp.int32), state


def ancestral(process, logits: Logits = Logits()) -> StepRule:
    """The ancestral step rule of a noise process (a block objective's inner process; a
    staggered block objective's own clocks)."""
    if isinstance(process, BlockDiffusion) and process.stagger:
        return StaggeredAncestral(process.process, logits, process)
    process = noise_process(process)
    rules = {MaskedProcess: MaskedAncestral, UniformProcess: UniformAncestral, HybridProcess: HybridAncestral}
    for kind, rule in rules.items():
        if isinstance(process, kind):
            return rule(process, logits)
    raise ValueError(f"no ancestral step rule for {type(process).__name__}; expected one of "
                     f"{[k.__name__ for k in rules]}")
