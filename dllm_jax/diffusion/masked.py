"""Masked (absorbing-state) diffusion: MDLM / MD4 / LLaDA.

Forward: each token stays clean with probability alpha(t), else becomes ``mask_id``.
Continuous-time negative ELBO (MDLM eq. 10, MD4 eq. 5):

    -log p(x) <= int_0^1 (-alpha'(t) / (1 - alpha(t))) E[ sum_{l: x_t^l = mask} -log p(x^l | x_t) ] dt.

"SUBS" parameterisation: the model has no logit for the mask (it predicts ordinary tokens
only), and unmasked positions are carried over unchanged, so only masked positions count.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dllm_jax.diffusion.base import NoiseProcess, per_example_uniform, token_nll


def per_position(x):
    """A per-row quantity (B,) as a column (B, 1); per-position ones (B, L) as they are."""
    return x[:, None] if x.ndim == 1 else x


@dataclasses.dataclass(frozen=True)
class MaskedProcess(NoiseProcess):
    """Times are per row (B,) or per position (B, L) (a staggered block's clocks)."""

    mask_id: int = -1

    def __post_init__(self):
        if self.mask_id < self.num_tokens:
            raise ValueError(
                f"MaskedProcess.mask_id={self.mask_id} must be a special id >= "
                f"num_tokens={self.num_tokens}"
            )

    def likelihood(self, noisy_BL, t_B):
        a = per_position(self.schedule.alpha(t_B))[..., None]
        is_mask = (noisy_BL == self.mask_id)[..., None]
        clean = jax.nn.one_hot(noisy_BL, self.num_tokens) * a
        return jnp.where(is_mask, 1.0 - a, clean)

    def corrupt(self, keys_B, tokens_BL, t_B):
        u_BL = per_example_uniform(keys_B, tokens_BL.shape[1:])
        drop = u_BL >= per_position(self.schedule.alpha(t_B))
        return jnp.where(drop, self.mask_id, tokens_BL)

    def prior(self, keys_B, length: int):
        return jnp.full((keys_B.shape[0], length), self.mask_id, jnp.int32)

    def weight(self, t_B):
        """-alpha'(t) / (1 - alpha(t))."""
        return -self.schedule.dalpha(t_B) / (1.0 - self.schedule.alpha(t_B))

    def elbo_terms(self, logits_BLV, tokens_BL, noisy_BL, t_B):
        nll_BL = token_nll(logits_BLV, tokens_BL, self.num_tokens)
        is_mask = noisy_BL == self.mask_id
        return jnp.where(is_mask, per_position(self.weight(t_B)) * nll_BL, 0.0)

    def denoising_positions(self, noisy_BL):
        """The masked positions: every other token is carried over (SUBS)."""
        return noisy_BL == self.mask_id
