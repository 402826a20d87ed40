"""Classifier-free guidance: one denoiser call on [conditional; unconditional] rows, mixed."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def guidance_mix(cond_BLV, uncond_BLV, weight: float):
    """log_softmax((1 + w) log p_cond - w log p_uncond), float32, from raw logits.

    Tokens the conditional rules out stay ruled out; the unconditional log-probs are
    floored so that -inf - (-inf) never makes a NaN.
    """
    cond_BLV = jax.nn.log_softmax(cond_BLV.astype(jnp.float32), axis=-1)
    uncond_BLV = jax.nn.log_softmax(uncond_BLV.astype(jnp.float32), axis=-1)
    mixed_BLV = (1.0 + weight) * cond_BLV - weight * jnp.maximum(uncond_BLV, -1e30)
    return jax.nn.log_softmax(jnp.where(cond_BLV == -jnp.inf, -jnp.inf, mixed_BLV), axis=-1)


def guided(denoise, fixed_BL, mask_id: int, weight: float):
    """Classifier-free guidance for a masked-process denoiser.

    cond = denoise(x), uncond = denoise(x with ``fixed_BL`` positions masked), both in one
    call on a batch of 2B; returns log_softmax((1 + w) log p_cond - w log p_uncond). Tokens
    the conditional rules out stay ruled out. The function has ``passes = 2`` (the driver
    counts both halves) and forwards ``time_conditioned``.

    Raises:
      ValueError: if ``weight`` is not a finite number >= 0.
    """
    if not (0.0 <= weight < float("inf")):
        raise ValueError(f"guidance weight must be a finite number >= 0, got {weight}")

    def guided_denoise(tokens_BL, t_B):
        batch = tokens_BL.shape[0]
        uncond_BL = jnp.where(fixed_BL, mask_id, tokens_BL)
        both_BLV = denoise(jnp.concatenate([tokens_BL, uncond_BL]), jnp.concatenate([t_B, t_B]))
        return guidance_mix(both_BLV[:batch], both_BLV[batch:], weight)

    guided_denoise.passes = 2 * getattr(denoise, "passes", 1)
    guided_denoise.time_conditioned = getattr(denoise, "time_conditioned", True)
    return guided_denoise
