"""The sampler family beyond plain ancestral steps, as small frozen-dataclass step rules.

Masked process: ``CachedMaskedAncestral`` (MDLM's ddpm_cache), ``OrderedUnmask`` (a fixed
count per step, chosen at random or by a confidence score; LLaDA's low-confidence
remasking is ``order="confidence"``), ``ConfidenceThreshold`` (Fast-dLLM parallel decoding),
``EntropyBounded`` (EB-sampler). The rules that revise committed tokens (``ReMDM``, the
uniform predictor-corrector) are in ``revising``, classifier-free guidance in ``guidance``;
``make_rule`` names them all.

Every rule applies its ``Logits`` (temperature, top-k, top-p) to the denoiser's output
before any draw; scores (confidence, margin, entropy) read the model's own distribution, as
LLaDA and Fast-dLLM do, so greedy draws still unmask the most confident positions first.
Rules that only unmask spend a network evaluation on a row only when it has something to
unmask (``nfe_B``), and skip the call when no row does.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from dllm_jax.diffusion.base import token_nll
from dllm_jax.diffusion.block import noise_process
from dllm_jax.diffusion.masked import MaskedProcess
from dllm_jax.sampling.ancestral import (
    ancestral,
    masked_ancestral_update,
    times_B,
)
from dllm_jax.sampling.draws import (
    TAG_TOKEN,
    Logits,
    categorical_BL,
    categorical_logp_BL,
)
from dllm_jax.sampling.driver import StepRule
from dllm_jax.sampling.revising import ReMDM, UniformPredictorCorrector
from dllm_jax.sampling.scores import (
    ORDERS,
    entropy_BL,
    evaluate_if,
    finishing_floor,
    masked_logp,
    masked_raw,
    model_logp,
    order_scores,
    rank_BL,
    require_process,
)


@dataclasses.dataclass(frozen=True)
class CachedMaskedAncestral(StepRule):
    """MDLM's ``ddpm_cache``: the masked ancestral law, skipping the network for rows whose
    tokens did not change since their last evaluation (most steps when K >> L) and for rows
    with nothing left to unmask: at most one pass per revealed token, however large K is.

    Valid only for a denoiser that ignores t (the cache is reused at later times). State:
    (cached float32 logits (B, L, V), valid_B).
    """

    process: MaskedProcess
    logits: Logits = Logits()

    def __post_init__(self):
        require_process(self, MaskedProcess)

    def init_state(self, tokens_BL):
        batch, length = tokens_BL.shape
        logits_BLV = jnp.zeros((batch, length, self.process.num_tokens), jnp.float32)
        return logits_BLV, jnp.zeros((batch,), bool)

    def check_denoiser(self, denoise) -> None:
        if getattr(denoise, "time_conditioned", True) is not False:
            raise ValueError(
                "CachedMaskedAncestral reuses logits across steps, so it needs a denoiser "
                "that ignores t, and this one is time-conditioned or does not say "
                "(time_conditioned is "
                f"{getattr(denoise, 'time_conditioned', 'unset')!r}). Use MaskedAncestral, "
                "or set `denoise.time_conditioned = False` on a function that ignores t."
            )

    def finished(self, tokens_BL):
        return ~jnp.any(tokens_BL == self.process.mask_id, axis=1)  # nothing left to unmask

    def step(self, denoise, tokens_BL, t, s, keys_BL, state):
        cached_BLV, valid_B = state
        batch = tokens_BL.shape[0]
        # A row pays a pass if it changed since its last one and still has a mask to fill.
        need_B = ~valid_B & jnp.any(tokens_BL == self.process.mask_id, axis=-1)

        def evaluate():
            fresh_BLV = denoise(tokens_BL, times_B(batch, t)).astype(jnp.float32)
            return jnp.where(need_B[:, None, None], fresh_BLV, cached_BLV)

        logits_BLV = jax.lax.cond(jnp.any(need_B), evaluate, lambda: cached_BLV)
        new_BL = masked_ancestral_update(
            self.process, logits_BLV, tokens_BL, t, s, keys_BL, self.logits
        )
        unchanged_B = jnp.all(new_BL == tokens_BL, axis=-1)
        return new_BL, need_B.astype(jnp.int32), (logits_BLV, unchanged_B)


@dataclasses.dataclass(frozen=True)
class OrderedUnmask(StepRule):
    """Unmask a scheduled number of positions per step, chosen by ``order``.

    Count: with M0 the masked positions at the start, R(s) = floor(M0 (1 - alpha(s)) + 1e-4)
    stay masked after the step to s (alpha(1) = 0, alpha(0) = 1: every row ends unmasked).
    Orders: ``random`` (a uniformly random subset), ``max_prob`` (highest top probability),
    ``margin`` (top1 - top2), ``entropy`` (lowest first), ``confidence`` (LLaDA: draw a token
    everywhere, keep the most probable draws), ``left_to_right`` (the lowest masked positions:
    semi-autoregressive inside a block, LLaDA's and Dream's left-to-right remasking). Scores
    read the model's own distribution (before ``Logits``); tokens come from the processed
    marginal (for ``confidence``, the draw that was scored). Equal scores: lower position first.
    """

    process: MaskedProcess
    order: str
    logits: Logits = Logits()

    def __post_init__(self):
        require_process(self, MaskedProcess)
        if self.order not in ORDERS:
            raise ValueError(f"unknown order {self.order!r}; expected one of {ORDERS}")

    def init_state(self, tokens_BL):
        return jnp.sum(tokens_BL == self.process.mask_id, axis=-1)

    def finished(self, tokens_BL):
        return ~jnp.any(tokens_BL == self.process.mask_id, axis=1)  # nothing left to unmask

    def step(self, denoise, tokens_BL, t, s, keys_BL, state):
        total_B = state
        masked_BL = tokens_BL == self.process.mask_id
        left_B = jnp.floor(total_B * (1.0 - self.process.schedule.alpha(s)) + 1e-4)
        left_B = jnp.clip(left_B.astype(jnp.int32), 0, total_B)
        count_B = jnp.maximum(jnp.sum(masked_BL, axis=-1) - left_B, 0)
        need_B = count_B > 0
        raw_BLV = evaluate_if(need_B, denoise, tokens_BL, t, self.process.num_tokens)
        logp_BLV = self.logits(raw_BLV)
        tok_BL = categorical_BL(keys_BL, TAG_TOKEN, logp_BLV)
        score_BL = order_scores(self.order, model_logp(raw_BLV), tok_BL, keys_BL)
        chosen_BL = masked_BL & (rank_BL(score_BL, masked_BL) < count_B[:, None])
        return jnp.where(chosen_BL, tok_BL, tokens_BL), need_B.astype(jnp.int32), state


@dataclasses.dataclass(frozen=True)
class ConfidenceThreshold(StepRule):
    """Fast-dLLM parallel decoding: draw a token at every masked position and keep every
    draw whose processed probability exceeds ``threshold`` — and at least the
    ceil(masked / steps_left) most confident, so every row finishes within K steps (the
    floor assumes the driver's uniform grid). Equal confidences: lower position first.
    """

    process: MaskedProcess
    threshold: float
    logits: Logits = Logits()

    def __post_init__(self):
        require_process(self, MaskedProcess)
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")

    def finished(self, tokens_BL):
        return ~jnp.any(tokens_BL == self.process.mask_id, axis=1)  # nothing left to unmask

    def step(self, denoise, tokens_BL, t, s, keys_BL, state):
        masked_BL, masked_B, raw_BLV = masked_raw(self, denoise, tokens_BL, t)
        if self.logits.is_identity:  # the draw's own pass over V gives the confidence
            tok_BL, conf_logp_BL = categorical_logp_BL(keys_BL, TAG_TOKEN, raw_BLV)
        else:
            tok_BL = categorical_BL(keys_BL, TAG_TOKEN, self.logits(raw_BLV))
            conf_logp_BL = -token_nll(raw_BLV, tok_BL, raw_BLV.shape[-1])  # the model's own log-prob
        conf_BL = jnp.exp(conf_logp_BL)
        floor_BL = rank_BL(conf_BL, masked_BL) < finishing_floor(masked_B, t, s)[:, None]
        chosen_BL = masked_BL & ((conf_BL > self.threshold) | floor_BL)
        return jnp.where(chosen_BL, tok_BL, tokens_BL), (masked_B > 0).astype(jnp.int32), state


@dataclasses.dataclass(frozen=True)
class EntropyBounded(StepRule):
    """EB-sampler (Ben-Hamu et al. 2025): sort masked positions by entropy (ascending, ties
    to the lower position) and unmask the longest prefix U with
    sum_{l in U} H_l - max_{l in U} H_l <= ``gamma`` (so at least one; gamma = 0 is one per
    step), and at least ceil(masked / steps_left) so every row finishes within K steps.
    Tokens come from the processed marginal.
    """

    process: MaskedProcess
    gamma: float
    logits: Logits = Logits()

    def __post_init__(self):
        require_process(self, MaskedProcess)
        if not self.gamma >= 0.0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")

    def finished(self, tokens_BL):
        return ~jnp.any(tokens_BL == self.process.mask_id, axis=1)  # nothing left to unmask

    def step(self, denoise, tokens_BL, t, s, keys_BL, state):
        masked_BL, masked_B, logp_BLV, model_BLV = masked_logp(self, denoise, tokens_BL, t)
        ent_BL = entropy_BL(model_BLV)
        sorted_BL = jnp.sort(jnp.where(masked_BL, ent_BL, jnp.inf), axis=-1)
        real_BL = jnp.isfinite(sorted_BL)
        sorted_BL = jnp.where(real_BL, sorted_BL, 0.0)
        # Sorted ascending, the prefix's max is its last entry: sum - max = sum before it.
        before_BL = jnp.cumsum(sorted_BL, axis=-1) - sorted_BL
        count_B = jnp.sum(real_BL & (before_BL <= self.gamma), axis=-1)
        count_B = jnp.minimum(jnp.maximum(count_B, finishing_floor(masked_B, t, s)), masked_B)
        chosen_BL = masked_BL & (rank_BL(-ent_BL, masked_BL) < count_B[:, None])
        tok_BL = categorical_BL(keys_BL, TAG_TOKEN, logp_BLV)
        return jnp.where(chosen_BL, tok_BL, tokens_BL), (masked_B > 0).astype(jnp.int32), state


RULES = {
    "cached": CachedMaskedAncestral,
    **{order: functools.partial(OrderedUnmask, order=order) for order in ORDERS},
    "threshold": ConfidenceThreshold,
    "entropy_bounded": EntropyBounded,
    "remdm": ReMDM,
    "pc": UniformPredictorCorrector,
}
RULE_NAMES = ("ancestral", *RULES)


def make_rule(name: str, process, **options) -> StepRule:
    """A step rule by name, e.g. ``make_rule("threshold", process, threshold=0.9)``.

    Raises:
      ValueError: unknown name, or a rule for the other process kind.
    """
    if name == "ancestral":
        return ancestral(process, **options)
    process = noise_process(process)
    if name not in RULES:
        raise ValueError(f"unknown step rule {name!r}; expected one of {RULE_NAMES}")
    return RULES[name](process, **options)
