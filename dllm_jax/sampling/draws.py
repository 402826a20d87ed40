"""Per-position randomness and logit processing shared by every step rule.

Every random draw of a sampler is keyed by (example, step, absolute position, purpose):
the driver hands a step rule one key per position (``keys_BL``), and a rule derives each
draw with a purpose tag (``fold_in(key, tag)``). So an example's sample depends neither on
its batch-mates nor on the canvas length it was padded to, and a resumed or block-wise
generation draws exactly what a fresh one would at the same positions.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

# The "step" whose keys draw the prior (the scan's steps are 0..K-1).
PRIOR_STEP = 2**31 - 1

# Purpose tags: one independent stream per kind of draw.
TAG_PRIOR, TAG_UNMASK, TAG_TOKEN, TAG_ORDER, TAG_REMASK, TAG_RENOISE, TAG_RENOISE_TOKEN, TAG_PRIOR_KIND = range(8)


def _per_position(fn, keys_BL, tag, *args):
    return jax.vmap(jax.vmap(lambda k, *a: fn(jax.random.fold_in(k, tag), *a)))(keys_BL, *args)


def uniform_BL(keys_BL, tag: int):
    """One float32 uniform in [0, 1) per position."""
    return _per_position(lambda k: jax.random.uniform(k, ()), keys_BL, tag)


def randint_BL(keys_BL, tag: int, high: int):
    """One integer in [0, high) per position."""
    return _per_position(lambda k: jax.random.randint(k, (), 0, high), keys_BL, tag)


# The samplers' token draw; ``gumbel`` is the earlier one, kept for benchmarks (read at trace time).
DRAW_METHOD = "inverse_cdf"


def categorical_BL(keys_BL, tag: int, logits_BLV, method: str | None = None):
    """One draw per position from softmax(logits), int32 (B, L); logits need not be normalised.

    ``method`` (default ``DRAW_METHOD``): ``inverse_cdf``: two uniforms per position, not one random number per token —
    O(B·L) random numbers a step instead of O(B·L·V) (``categorical_inverse_cdf``).
    ``gumbel``: Gumbel-argmax over the V tokens (``jax.random.categorical``).

    Masked rules never include "stay masked" in this draw: they decide to unmask first (a
    uniform against the unmask probability), then draw the token here, so no token's share
    falls below float32's reach.
    """
    return categorical_logp_BL(keys_BL, tag, logits_BLV, method)[0]


def categorical_logp_BL(keys_BL, tag: int, logits_BLV, method: str | None = None):
    """``categorical_BL``'s draw and the drawn token's log-probability under softmax(logits),
    (int32 (B, L), float32 (B, L)), from the same pass over the vocabulary (the inverse-CDF
    draw's block masses give the normaliser): a confidence score without a log-softmax."""
    method = DRAW_METHOD if method is None else method
    if method == "gumbel":
        def draw(k, lg):
            lg = lg.astype(jnp.float32)
            tok = jax.random.categorical(k, lg)
            return tok, lg[tok] - jax.nn.logsumexp(lg)
    elif method == "inverse_cdf":
        draw = _inverse_cdf_draw
    else:
        raise ValueError(f"unknown draw method {method!r}; expected inverse_cdf or gumbel")
    tok_BL, logp_BL = _per_position(draw, keys_BL, tag, logits_BLV)
    return tok_BL.astype(jnp.int32), logp_BL


def categorical_inverse_cdf(key, logits_V):
    """One token from softmax(logits_V) by a two-level inverse-CDF draw (two uniforms).

    The V tokens are cut into ~sqrt(V) blocks: a first uniform picks a block by the
    cumulative block masses, a second the token within it by the block's own normalised
    cumulative masses. Each level's cumulative sum runs over ~sqrt(V) float32 terms, so a
    token keeps its share down to ~2^-24 of its block's mass (a single cumulative sum over
    V would lose the tail to rounding). Tokens of probability 0 (-inf logits: top-k / top-p)
    are never drawn.
    """
    return _inverse_cdf_draw(key, logits_V)[0]


def _inverse_cdf_draw(key, logits_V):
    """(token, its log-probability) of ``categorical_inverse_cdf``."""
    V = logits_V.shape[-1]
    C = max(1, math.isqrt(V - 1) + 1)
    nb = -(-V // C)
    lg = jnp.pad(logits_V.astype(jnp.float32), (0, nb * C - V), constant_values=-jnp.inf).reshape(nb, C)
    block_lse = jax.nn.logsumexp(lg, axis=-1)  # (nb,) log block masses (unnormalised)
    u = jax.random.uniform(key, (2,))
    top = jnp.max(block_lse)
    block_w = jnp.exp(block_lse - top)
    block = _inverse_cdf(block_w, u[0])
    within = _inverse_cdf(jnp.exp(lg[block] - block_lse[block]), u[1])
    logp = lg[block, within] - (top + jnp.log(jnp.sum(block_w)))
    return block * C + within, logp


def _inverse_cdf(weights_N, u):
    """The index i with cum[i-1] <= u * total < cum[i] over non-negative ``weights_N``
    (never one of weight 0)."""
    cum = jnp.cumsum(weights_N)
    idx = jnp.sum(cum <= u * cum[-1])
    last = jnp.max(jnp.where(weights_N > 0, jnp.arange(weights_N.shape[0]), 0))
    return jnp.minimum(idx, last)


def process_prior(process, keys_BL):
    """x_1 of a noise process drawn per position (B, L): all mask for an absorbing process
    (it has a ``mask_id``), a uniform token at each position from its own key for the
    uniform one, and for a hybrid a uniform token with probability u(1), else the mask."""
    mask_id = getattr(process, "mask_id", None)
    if mask_id is None:
        return randint_BL(keys_BL, TAG_PRIOR, process.num_tokens)
    masks_BL = jnp.full(keys_BL.shape, mask_id, jnp.int32)
    u1 = getattr(process, "prior_uniform_share", 0.0)  # a hybrid process: x_1 mixes masks and tokens
    if u1 == 0.0:
        return masks_BL
    uniform_BL_ = uniform_BL(keys_BL, TAG_PRIOR_KIND) < u1
    return jnp.where(uniform_BL_, randint_BL(keys_BL, TAG_PRIOR, process.num_tokens), masks_BL)


def prior_keys(keys_B, positions_L):
    """Keys (B, L) of the prior draw."""
    return position_keys(keys_B, PRIOR_STEP, positions_L)


def position_keys(keys_B, step, positions_L):
    """Keys (B, L) of one step: fold_in(fold_in(example_key, step), absolute position)."""
    step_B = jax.vmap(jax.random.fold_in, (0, None))(keys_B, step)
    return jax.vmap(lambda k: jax.vmap(lambda p: jax.random.fold_in(k, p))(positions_L))(step_B)


@dataclasses.dataclass(frozen=True)
class Logits:
    """Temperature, top-k and top-p (nucleus) applied to the denoiser's logits before a draw.

    ``temperature`` > 0 divides the logits; ``top_k`` > 0 keeps the k most likely tokens
    (0: all); ``top_p`` in (0, 1] keeps the smallest set of most likely tokens whose mass
    reaches top_p (ties at the boundary kept). The defaults change nothing.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top_k must be an integer >= 0 (0 keeps all tokens), got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def truncates(self, num_tokens: int) -> bool:
        """Whether top-k or top-p can drop tokens of a ``num_tokens`` vocabulary."""
        return bool(self.top_k and self.top_k < num_tokens) or self.top_p < 1.0

    @property
    def is_identity(self) -> bool:
        """The defaults: the processed distribution is the model's own."""
        return self.temperature == 1.0 and not self.top_k and self.top_p == 1.0

    def __call__(self, logits_V):
        """Processed log-probabilities (float32), -inf outside the kept set; over the last
        axis, so any leading (batch, position) axes pass through."""
        logp = jax.nn.log_softmax(logits_V.astype(jnp.float32) / self.temperature, axis=-1)
        if not self.truncates(logp.shape[-1]):  # already normalised: no second pass over V
            return logp
        if self.top_k and self.top_k < logp.shape[-1]:
            kth = jax.lax.top_k(logp, self.top_k)[0][..., -1:]
            logp = jnp.where(logp >= kth, logp, -jnp.inf)
        if self.top_p < 1.0:
            sorted_desc = -jnp.sort(-logp, axis=-1)
            mass_before = jnp.cumsum(jnp.exp(sorted_desc), axis=-1) - jnp.exp(sorted_desc)
            # The smallest probability still inside the nucleus.
            cutoff = jnp.min(jnp.where(mass_before < self.top_p, sorted_desc, jnp.inf), axis=-1, keepdims=True)
            logp = jnp.where(logp >= cutoff, logp, -jnp.inf)
        return jax.nn.log_softmax(logp, axis=-1)
