"""Ancestral step rules: exact draws from the process's reverse posterior.

Each position is updated independently given x_t, from the model's marginal posterior of
the clean token. Masked: decide "unmask or not" first, then draw the token — never a joint
draw over "stay masked" + V tokens, whose float32 Gumbel noise truncates the tail.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dllm_jax.diffusion.masked import MaskedProcess
from dllm_jax.diffusion.uniform import UniformProcess
from dllm_jax.sampling.driver import StepRule


def _times(batch, t):
    return jnp.full((batch,), t, jnp.float32)


@dataclasses.dataclass(frozen=True)
class MaskedAncestral(StepRule):
    """MDLM/MD4 ancestral step: each masked position unmasks with probability
    (alpha_s - alpha_t) / (1 - alpha_t), to a token drawn from the denoiser."""

    process: MaskedProcess

    def prior(self, keys_B, length):
        return self.process.prior(keys_B, length)

    def step(self, denoise, tokens_BL, t, s, keys_B, state):
        batch = tokens_BL.shape[0]
        logits_BLV = denoise(tokens_BL, _times(batch, t))
        a_t, a_s = self.process.schedule.alpha(t), self.process.schedule.alpha(s)
        p_unmask = (a_s - a_t) / (1.0 - a_t)
        mask_id = self.process.mask_id

        def one(key, logits_LV, x_L):
            k_u, k_tok = jax.random.split(key)
            reveal = jax.random.uniform(k_u, x_L.shape) < p_unmask
            tok_L = jax.random.categorical(k_tok, logits_LV).astype(x_L.dtype)
            return jnp.where((x_L == mask_id) & reveal, tok_L, x_L)

        new_BL = jax.vmap(one)(keys_B, logits_BLV, tokens_BL)
        return new_BL, jnp.ones((batch,), jnp.int32), state


@dataclasses.dataclass(frozen=True)
class UniformAncestral(StepRule):
    """Uniform-process ancestral step: x_s^l ~ sum_a p(a | x_t) q(x_s^l | x_t^l, x_0^l = a).

    With w_a = p_a beta_t / q_t(x | a) and W = sum_a w_a,
    p(x_s = j | x_t = x) ∝ q_{t|s}(x | j) (alpha_s w_j + beta_s W), beta = (1 - alpha) / V.
    Every position may change at every step: written tokens are revised.
    """

    process: UniformProcess

    def prior(self, keys_B, length):
        return self.process.prior(keys_B, length)

    def step(self, denoise, tokens_BL, t, s, keys_B, state):
        batch = tokens_BL.shape[0]
        V = self.process.num_tokens
        logits_BLV = denoise(tokens_BL, _times(batch, t))
        probs_BLV = jax.nn.softmax(logits_BLV.astype(jnp.float32), axis=-1)
        a_t, a_s = self.process.schedule.alpha(t), self.process.schedule.alpha(s)
        beta_t, beta_s = (1.0 - a_t) / V, (1.0 - a_s) / V
        is_x = jax.nn.one_hot(tokens_BL, V, dtype=bool)
        w = jnp.where(is_x, probs_BLV * beta_t / (beta_t + a_t), probs_BLV)
        mix = a_s * w + beta_s * jnp.sum(w, axis=-1, keepdims=True)
        a_ts = a_t / a_s
        back = jnp.where(is_x, a_ts, 0.0) + (1.0 - a_ts) / V  # q(x_t = x | x_s = j)
        logits = jnp.log(back * mix)

        def one(key, logits_LV):
            return jax.random.categorical(key, logits_LV).astype(tokens_BL.dtype)

        return jax.vmap(one)(keys_B, logits), jnp.ones((batch,), jnp.int32), state


def ancestral(process) -> StepRule:
    """The ancestral step rule of a noise process."""
    rules = {MaskedProcess: MaskedAncestral, UniformProcess: UniformAncestral}
    for kind, rule in rules.items():
        if isinstance(process, kind):
            return rule(process)
    raise ValueError(f"no ancestral step rule for {type(process).__name__}; expected one of "
                     f"{[k.__name__ for k in rules]}")
