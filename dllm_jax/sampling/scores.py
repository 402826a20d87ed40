"""What the step rules share: the gated network call, confidence scores and ranks, and the
step counting of the driver's uniform time grid."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dllm_jax.sampling.ancestral import times_B
from dllm_jax.sampling.draws import TAG_ORDER, uniform_BL

ORDERS = ("random", "max_prob", "margin", "entropy", "confidence", "left_to_right")


def require_process(rule, kind) -> None:
    if not isinstance(rule.process, kind):
        raise ValueError(
            f"{type(rule).__name__} needs a {kind.__name__}, got {type(rule.process).__name__}"
        )


def evaluate_if(need_B, denoise, tokens_BL, t, num_tokens: int):
    """Raw float32 logits (B, L, V); the network is not called at all if no row needs it."""
    batch, length = tokens_BL.shape
    return jax.lax.cond(
        jnp.any(need_B),
        lambda: denoise(tokens_BL, times_B(batch, t)).astype(jnp.float32),
        lambda: jnp.zeros((batch, length, num_tokens), jnp.float32),
    )


def masked_raw(rule, denoise, tokens_BL, t):
    """(masked_BL, masked count_B, raw float32 logits_BLV); no network call if no row has a
    mask left."""
    masked_BL = tokens_BL == rule.process.mask_id
    masked_B = jnp.sum(masked_BL, axis=-1)
    return masked_BL, masked_B, evaluate_if(masked_B > 0, denoise, tokens_BL, t, rule.process.num_tokens)


def masked_logp(rule, denoise, tokens_BL, t):
    """(masked_BL, masked count_B, processed log-probs_BLV, the model's own log-probs_BLV);
    no network call if no row has a mask left."""
    masked_BL, masked_B, raw_BLV = masked_raw(rule, denoise, tokens_BL, t)
    logp_BLV = rule.logits(raw_BLV)
    return masked_BL, masked_B, logp_BLV, logp_BLV if rule.logits.is_identity else model_logp(raw_BLV)


def model_logp(raw_BLV):
    """The model's own log-probabilities, before ``Logits``: what confidence scores read
    (LLaDA and Fast-dLLM score the softmax of the raw logits), so that greedy or sharpened
    draws (``Logits(top_k=1)``) keep their confidence order instead of tying at 1."""
    return jax.nn.log_softmax(raw_BLV, axis=-1)


PAIRWISE_RANK_MAX_LEN = 256  # up to here ranks count pairs (B x L x L), beyond they sort


def rank_BL(score_BL, candidate_BL):
    """Each position's rank by descending score among candidates (0 = best), (B, L).

    Ties go to the lower position index (stable sort); non-candidates rank after all
    candidates. Choosing ``rank < n`` selects a row's top n with a traced n. Rows of up to
    ``PAIRWISE_RANK_MAX_LEN`` positions count, for each position, the positions ordered
    before it (one fused comparison, no sort: two argsorts cost more than the rest of a
    threshold step on CPU); longer rows sort. Both give the same ranks.
    """
    # ascending: best first; a NaN score ranks with the non-candidates (as a sort puts it last)
    key_BL = jnp.where(candidate_BL & ~jnp.isnan(score_BL), -score_BL, jnp.inf)
    if key_BL.shape[-1] > PAIRWISE_RANK_MAX_LEN:
        order_BL = jnp.argsort(key_BL, axis=-1, stable=True)
        return jnp.argsort(order_BL, axis=-1)
    idx_L = jnp.arange(key_BL.shape[-1])
    other_BLL, this_BLL = key_BL[..., None, :], key_BL[..., :, None]
    before_BLL = (other_BLL < this_BLL) | ((other_BLL == this_BLL) & (idx_L[None, :] < idx_L[:, None]))
    return jnp.sum(before_BLL, axis=-1).astype(jnp.int32)


def token_prob_BL(logp_BLV, tok_BL):
    """Processed probability of the token drawn at each position."""
    return jnp.exp(jnp.take_along_axis(logp_BLV, tok_BL[..., None], axis=-1)[..., 0])


def entropy_BL(logp_BLV):
    probs_BLV = jnp.exp(logp_BLV)
    return -jnp.sum(jnp.where(probs_BLV > 0, probs_BLV * logp_BLV, 0.0), axis=-1)


def steps_left(t, s):
    """Steps still to run, this one included, on the driver's uniform grid: t / (t - s)."""
    return jnp.round(t / (t - s)).astype(jnp.int32)


def finishing_floor(masked_B, t, s):
    """ceil(masked / steps_left): unmasking at least this many finishes every row in K steps."""
    left = steps_left(t, s)
    return (masked_B + left - 1) // left


def order_scores(order: str, logp_BLV, tok_BL, keys_BL):
    """Higher first. ``confidence`` scores the token already drawn at each position."""
    probs_BLV = jnp.exp(logp_BLV)
    if order == "random":
        return uniform_BL(keys_BL, TAG_ORDER)
    if order == "left_to_right":  # equal scores: the lowest masked positions first
        return jnp.zeros(tok_BL.shape, jnp.float32)
    if order == "max_prob":
        return jnp.max(probs_BLV, axis=-1)
    if order == "margin":
        top2_BL2 = jax.lax.top_k(probs_BLV, 2)[0]
        return top2_BL2[..., 0] - top2_BL2[..., 1]
    if order == "entropy":
        return -entropy_BL(logp_BLV)
    return token_prob_BL(logp_BLV, tok_BL)
