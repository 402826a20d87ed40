"""The AR objective on the same backbone (causal mask): the like-for-like baseline.

The input is ``[bos, x_1 .. x_{L-1}]`` and the targets are ``x_1 .. x_L``, so every one of
the L tokens is scored, exactly as the diffusion bound scores all L tokens.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from dllm_jax.diffusion.base import Objective, token_nll


def shift_right(tokens_BL, bos_id: int):
    bos = jnp.full((tokens_BL.shape[0], 1), bos_id, tokens_BL.dtype)
    return jnp.concatenate([bos, tokens_BL[:, :-1]], axis=1)


@dataclasses.dataclass(frozen=True)
class ARObjective(Objective):
    num_tokens: int
    bos_id: int

    def training_loss(self, apply_fn, keys_B, tokens_BL, loss_mask_BL, u_B):
        del keys_B, u_B  # exact likelihood: no noise, no time
        logits_BLV = apply_fn(shift_right(tokens_BL, self.bos_id), None)
        nll_BL = token_nll(logits_BLV, jnp.where(loss_mask_BL, tokens_BL, 0), self.num_tokens)
        return jnp.where(loss_mask_BL, nll_BL, 0.0)
