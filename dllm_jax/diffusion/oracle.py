"""Exact denoisers for small distributions given as an explicit table of sequences.

For a distribution p over a finite support (the rows of ``support_SL``), the exact
denoiser is the per-position marginal of the posterior p(x_0 | x_t), which is

    p(x_0 = s | x_t)  ∝  p(s) * prod_l q_t(x_t^l | s_l),

with q_t the process's forward marginal (``NoiseProcess.likelihood``). This makes ELBOs and
samplers checkable against exact answers: tests, and users validating a new process.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax.diffusion.base import NoiseProcess
from dllm_jax.diffusion.masked import MaskedProcess

# Any time with 0 < alpha(t) < 1 (true of every schedule at t = 0.5) gives the masked answer.
_MASKED_EVAL_TIME = 0.5


def oracle_denoiser(process: NoiseProcess, support_SL, probs_S, dtype=jnp.float32):
    """Return ``denoise(noisy_BL, t_B) -> logits_BLV``, the exact log-posterior marginals.

    The function carries ``time_conditioned``: False for a ``MaskedProcess``, whose posterior
    p(s | s agrees with x_t wherever x_t is unmasked) does not depend on t (alpha(t) cancels),
    True otherwise. The masked oracle is evaluated at one fixed interior time, so it is truly
    t-free: a state impossible at t = 1 (a fixed prompt token where alpha = 0) still gets the
    posterior given its unmasked tokens instead of a 0/0.
    """
    time_conditioned = not isinstance(process, MaskedProcess)
    support_SL = jnp.asarray(support_SL, jnp.int32)
    log_p_S = jnp.log(jnp.asarray(probs_S, dtype))
    onehot_SLV = jax.nn.one_hot(support_SL, process.num_tokens, dtype=dtype)

    def denoise(noisy_BL, t_B):
        if not time_conditioned:
            t_B = _MASKED_EVAL_TIME
        t_B = jnp.broadcast_to(jnp.asarray(t_B, dtype), noisy_BL.shape[:1])
        lik_BLV = process.likelihood(noisy_BL, t_B)
        # log q_t(x_t | s) = sum_l log lik[b, l, s_l]
        log_lik_BLV = jnp.log(lik_BLV)
        log_lik_BS = jnp.einsum("blv,slv->bs", jnp.where(lik_BLV > 0, log_lik_BLV, -1e30), onehot_SLV)
        post_BS = jax.nn.softmax(log_lik_BS + log_p_S[None], axis=-1)
        marg_BLV = jnp.einsum("bs,slv->blv", post_BS, onehot_SLV)
        return jnp.log(marg_BLV)

    denoise.time_conditioned = time_conditioned
    return denoise


def block_oracle_denoiser(process: NoiseProcess, support_SL, probs_S, block_size: int, dtype=jnp.float32):
    """The exact block-conditional denoiser of block diffusion, as a two-stream function.

    ``denoise(noisy_BL, t_BN, clean_BL=...) -> logits_BLV``: at the positions of block b,
    the log posterior marginals of its clean tokens given the clean past x^{<b} (read from
    ``clean_BL``) and the noisy block x_t^b at time ``t_BN[:, b]``:

        p(x^b = s^b | x^{<b}, x_t^b)  ∝  sum over s with s^{<b} = x^{<b} of  p(s) prod_{l in b} q_t(x_t^l | s_l).

    Noisy tokens outside block b are not read. Masked processes are t-free, as in
    ``oracle_denoiser``. This is the denoiser ``BlockDiffusion`` calls with; with it the
    block NELBO is tight: -log p(x).
    """
    time_conditioned = not isinstance(process, MaskedProcess)
    support_SL = jnp.asarray(support_SL, jnp.int32)
    log_p_S = jnp.log(jnp.asarray(probs_S, dtype))
    onehot_SLV = jax.nn.one_hot(support_SL, process.num_tokens, dtype=dtype)
    L = support_SL.shape[1]
    if L % block_size:
        raise ValueError(f"support length {L} is not a multiple of block_size={block_size}")

    def denoise(noisy_BL, t_BN, clean_BL):
        B = noisy_BL.shape[0]
        t_BN = jnp.broadcast_to(jnp.asarray(t_BN, dtype), (B, L // block_size))
        out = []
        for b, start in enumerate(range(0, L, block_size)):
            blk = slice(start, start + block_size)
            t_B = jnp.full((B,), _MASKED_EVAL_TIME, dtype) if not time_conditioned else t_BN[:, b]
            lik_BCV = process.likelihood(noisy_BL[:, blk], t_B)
            log_lik_BCV = jnp.where(lik_BCV > 0, jnp.log(jnp.where(lik_BCV > 0, lik_BCV, 1.0)), -1e30)
            log_lik_BS = jnp.einsum("bcv,scv->bs", log_lik_BCV, onehot_SLV[:, blk])
            same_past_BS = jnp.all(clean_BL[:, None, :start] == support_SL[None, :, :start], axis=-1)
            post_BS = jax.nn.softmax(jnp.where(same_past_BS, log_lik_BS + log_p_S[None], -jnp.inf), axis=-1)
            out.append(jnp.log(jnp.einsum("bs,scv->bcv", post_BS, onehot_SLV[:, blk])))
        return jnp.concatenate(out, axis=1)

    denoise.time_conditioned = time_conditioned
    return denoise


def all_sequences(num_tokens: int, length: int) -> np.ndarray:
    """Every sequence of ``length`` tokens in lexicographic order: (num_tokens**length, length)."""
    grids = np.meshgrid(*[np.arange(num_tokens)] * length, indexing="ij")
    return np.stack([g.reshape(-1) for g in grids], axis=-1).astype(np.int32)


def sequence_index(tokens_BL, num_tokens: int) -> np.ndarray:
    """Inverse of ``all_sequences``: the lexicographic index of each row."""
    tokens_BL = np.asarray(tokens_BL, np.int64)
    weights = num_tokens ** np.arange(tokens_BL.shape[1] - 1, -1, -1)
    return tokens_BL @ weights
