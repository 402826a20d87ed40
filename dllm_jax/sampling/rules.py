"""The sampler family beyond plain ancestral steps, as small frozen-dataclass step rules.

Masked process: ``CachedMaskedAncestral`` (MDLM's ddpm_cache), ``OrderedUnmask`` (a fixed
count per step, chosen at random or by a confidence score; LLaDA's low-confidence
remasking is ``order="confidence"``), ``ConfidenceThreshold`` (Fast-dLLM parallel decoding),
``EntropyBounded`` (EB-sampler) and ``ReMDM`` (remasking). Uniform process:
``UniformPredictorCorrector``. ``guided`` wraps a denoiser with classifier-free guidance.

Every rule applies its ``Logits`` (temperature, top-k, top-p) to the denoiser's output
before any draw or score. Rules that only unmask spend a network evaluation on a row only
when it has something to unmask (``nfe_B``), and skip the call when no row does.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from dllm_jax.diffusion.block import noise_process
from dllm_jax.diffusion.masked import MaskedProcess
from dllm_jax.diffusion.uniform import UniformProcess
from dllm_jax.sampling.ancestral import (
    ancestral,
    masked_ancestral_update,
    times_B,
    uniform_posterior_logits,
)
from dllm_jax.sampling.draws import (
    TAG_ORDER,
    TAG_REMASK,
    TAG_RENOISE,
    TAG_RENOISE_TOKEN,
    TAG_TOKEN,
    TAG_UNMASK,
    Logits,
    categorical_BL,
    randint_BL,
    uniform_BL,
)
from dllm_jax.sampling.driver import StepRule

ORDERS = ("random", "max_prob", "margin", "entropy", "confidence")
REMDM_SCHEDULES = ("cap", "rescale", "conf")
# Corrector round r draws with tag + r * ROUND_STRIDE: a stream apart from every base tag.
ROUND_STRIDE = 16


def _require(rule, kind) -> None:
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


def masked_logp(rule, denoise, tokens_BL, t):
    """(masked_BL, masked count_B, processed log-probs_BLV); no network call if no row has
    a mask left."""
    masked_BL = tokens_BL == rule.process.mask_id
    masked_B = jnp.sum(masked_BL, axis=-1)
    raw_BLV = evaluate_if(masked_B > 0, denoise, tokens_BL, t, rule.process.num_tokens)
    return masked_BL, masked_B, rule.logits(raw_BLV)


def rank_BL(score_BL, candidate_BL):
    """Each position's rank by descending score among candidates (0 = best), (B, L).

    Ties go to the lower position index (stable sort); non-candidates rank after all
    candidates. Choosing ``rank < n`` selects a row's top n with a traced n.
    """
    order_BL = jnp.argsort(jnp.where(candidate_BL, -score_BL, jnp.inf), axis=-1, stable=True)
    return jnp.argsort(order_BL, axis=-1)


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
        _require(self, MaskedProcess)

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


def order_scores(order: str, logp_BLV, tok_BL, keys_BL):
    """Higher first. ``confidence`` scores the token already drawn at each position."""
    probs_BLV = jnp.exp(logp_BLV)
    if order == "random":
        return uniform_BL(keys_BL, TAG_ORDER)
    if order == "max_prob":
        return jnp.max(probs_BLV, axis=-1)
    if order == "margin":
        top2_BL2 = jax.lax.top_k(probs_BLV, 2)[0]
        return top2_BL2[..., 0] - top2_BL2[..., 1]
    if order == "entropy":
        return -entropy_BL(logp_BLV)
    return token_prob_BL(logp_BLV, tok_BL)


@dataclasses.dataclass(frozen=True)
class OrderedUnmask(StepRule):
    """Unmask a scheduled number of positions per step, chosen by ``order``.

    Count: with M0 the masked positions at the start, R(s) = floor(M0 (1 - alpha(s)) + 1e-4)
    stay masked after the step to s (alpha(1) = 0, alpha(0) = 1: every row ends unmasked).
    Orders: ``random`` (a uniformly random subset), ``max_prob`` (highest top probability),
    ``margin`` (top1 - top2), ``entropy`` (lowest first), ``confidence`` (LLaDA: draw a token
    everywhere, keep the most probable draws). Tokens come from the processed marginal (for
    ``confidence``, the draw that was scored). Equal scores: lower position first.
    """

    process: MaskedProcess
    order: str
    logits: Logits = Logits()

    def __post_init__(self):
        _require(self, MaskedProcess)
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
        score_BL = order_scores(self.order, logp_BLV, tok_BL, keys_BL)
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
        _require(self, MaskedProcess)
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")

    def finished(self, tokens_BL):
        return ~jnp.any(tokens_BL == self.process.mask_id, axis=1)  # nothing left to unmask

    def step(self, denoise, tokens_BL, t, s, keys_BL, state):
        masked_BL, masked_B, logp_BLV = masked_logp(self, denoise, tokens_BL, t)
        tok_BL = categorical_BL(keys_BL, TAG_TOKEN, logp_BLV)
        conf_BL = token_prob_BL(logp_BLV, tok_BL)
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
        _require(self, MaskedProcess)
        if not self.gamma >= 0.0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")

    def finished(self, tokens_BL):
        return ~jnp.any(tokens_BL == self.process.mask_id, axis=1)  # nothing left to unmask

    def step(self, denoise, tokens_BL, t, s, keys_BL, state):
        masked_BL, masked_B, logp_BLV = masked_logp(self, denoise, tokens_BL, t)
        ent_BL = entropy_BL(logp_BLV)
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


@dataclasses.dataclass(frozen=True)
class ReMDM(StepRule):
    """ReMDM (Wang et al. 2025): the masked reverse step with remasking probability sigma.

    Per position, independently: a masked token unmasks with probability
    (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t) to a draw from the processed marginal;
    a decoded token is remasked with probability sigma (the driver restores fixed ones).
    sigma_max = min(1, (1 - alpha_s) / alpha_t) (0 at alpha_t = 0); ``cap``: min(eta,
    sigma_max); ``rescale``: eta * sigma_max; ``conf``: sigma_l = softmax(-psi)_l sigma_max
    over the positions this rule decoded, psi_l the probability of the token when it was
    decoded (state), so masked and never-decoded positions get sigma 0 (``eta`` unused).
    """

    process: MaskedProcess
    schedule: str
    eta: float = 0.0
    logits: Logits = Logits()

    def __post_init__(self):
        _require(self, MaskedProcess)
        if self.schedule not in REMDM_SCHEDULES:
            raise ValueError(
                f"unknown ReMDM schedule {self.schedule!r}; expected one of {REMDM_SCHEDULES}"
            )
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"ReMDM eta must be in [0, 1], got {self.eta}")

    def init_state(self, tokens_BL):
        return jnp.full(tokens_BL.shape, jnp.inf, jnp.float32)  # psi: +inf = never decoded

    def sigma_BL(self, masked_BL, psi_BL, a_t, a_s):
        sigma_max = jnp.where(a_t > 0, jnp.minimum(1.0, (1.0 - a_s) / jnp.maximum(a_t, 1e-30)), 0.0)
        if self.schedule == "cap":
            return jnp.full(masked_BL.shape, jnp.minimum(self.eta, sigma_max))
        if self.schedule == "rescale":
            return jnp.full(masked_BL.shape, self.eta * sigma_max)
        weight_BL = jnp.where(~masked_BL & jnp.isfinite(psi_BL), jnp.exp(-psi_BL), 0.0)
        total_B1 = jnp.sum(weight_BL, axis=-1, keepdims=True)
        return weight_BL / jnp.where(total_B1 > 0, total_B1, 1.0) * sigma_max

    def step(self, denoise, tokens_BL, t, s, keys_BL, state):
        psi_BL = state
        batch = tokens_BL.shape[0]
        a_t, a_s = self.process.schedule.alpha(t), self.process.schedule.alpha(s)
        masked_BL = tokens_BL == self.process.mask_id
        sigma_BL = self.sigma_BL(masked_BL, psi_BL, a_t, a_s)
        logp_BLV = self.logits(denoise(tokens_BL, times_B(batch, t)))
        tok_BL = categorical_BL(keys_BL, TAG_TOKEN, logp_BLV)
        p_unmask_BL = (a_s - (1.0 - sigma_BL) * a_t) / (1.0 - a_t)
        unmask_BL = masked_BL & (uniform_BL(keys_BL, TAG_UNMASK) < p_unmask_BL)
        remask_BL = ~masked_BL & (uniform_BL(keys_BL, TAG_REMASK) < sigma_BL)
        new_BL = jnp.where(remask_BL, self.process.mask_id, tokens_BL)
        new_BL = jnp.where(unmask_BL, tok_BL, new_BL)
        psi_BL = jnp.where(unmask_BL, token_prob_BL(logp_BLV, tok_BL), psi_BL)
        return new_BL, jnp.ones((batch,), jnp.int32), psi_BL


@dataclasses.dataclass(frozen=True)
class UniformPredictorCorrector(StepRule):
    """Uniform process: an ancestral step t -> s, then ``corrector_steps`` rounds of
    renoising s -> t (keep each token with probability alpha_t / alpha_s, else a uniform
    token) and stepping t -> s again. nfe = 1 + corrector_steps per step.
    """

    process: UniformProcess
    corrector_steps: int = 1
    logits: Logits = Logits()

    def __post_init__(self):
        _require(self, UniformProcess)
        steps = self.corrector_steps
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f"corrector_steps must be an integer >= 0, got {steps!r}")

    def step(self, denoise, tokens_BL, t, s, keys_BL, state):
        batch = tokens_BL.shape[0]
        a_t, a_s = self.process.schedule.alpha(t), self.process.schedule.alpha(s)

        def predict(x_BL, offset):
            logp_BLV = self.logits(denoise(x_BL, times_B(batch, t)))
            post_BLV = uniform_posterior_logits(self.process, jnp.exp(logp_BLV), x_BL, t, s)
            return categorical_BL(keys_BL, TAG_TOKEN + offset, post_BLV)

        def correct(r, x_BL):
            offset = r * ROUND_STRIDE
            keep_BL = uniform_BL(keys_BL, TAG_RENOISE + offset) < a_t / a_s
            noise_BL = randint_BL(keys_BL, TAG_RENOISE_TOKEN + offset, self.process.num_tokens)
            return predict(jnp.where(keep_BL, x_BL, noise_BL), offset)

        x_BL = jax.lax.fori_loop(1, self.corrector_steps + 1, correct, predict(tokens_BL, 0))
        return x_BL, jnp.full((batch,), 1 + self.corrector_steps, jnp.int32), state


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
    process = noise_process(process)
    if name == "ancestral":
        return ancestral(process, **options)
    if name not in RULES:
        raise ValueError(f"unknown step rule {name!r}; expected one of {RULE_NAMES}")
    return RULES[name](process, **options)
