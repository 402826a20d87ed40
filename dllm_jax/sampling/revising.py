"""Step rules that may change committed tokens: ReMDM remasking (masked process) and the
uniform predictor-corrector. Each corrector round costs one network evaluation (``nfe_B``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dllm_jax.diffusion.base import token_nll
from dllm_jax.diffusion.masked import MaskedProcess
from dllm_jax.diffusion.uniform import UniformProcess
from dllm_jax.sampling.ancestral import (
    times_B,
    uniform_posterior_logits,
)
from dllm_jax.sampling.draws import (
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
from dllm_jax.sampling.scores import require_process, token_prob_BL

REMDM_SCHEDULES = ("cap", "rescale", "conf")
# Corrector round r draws with tag + r * ROUND_STRIDE: a stream apart from every base tag.
ROUND_STRIDE = 16


@dataclasses.dataclass(frozen=True)
class ReMDM(StepRule):
    """ReMDM (Wang et al. 2025): the masked reverse step with remasking probability sigma.

    Per position, independently: a masked token unmasks with probability
    (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t) to a draw from the processed marginal;
    a decoded token is remasked with probability sigma (the driver restores fixed ones).
    sigma_max = min(1, (1 - alpha_s) / alpha_t) (0 at alpha_t = 0); ``cap``: min(eta,
    sigma_max); ``rescale``: eta * sigma_max; ``conf``: sigma_l = softmax(-psi)_l sigma_max
    over the positions this rule decoded, psi_l the model's own probability (softmax of its
    logits, before temperature / top-k / top-p) of the token when it was decoded (state), so
    greedy or tempered draws do not flatten the scores; masked and never-decoded positions
    get sigma 0 (``eta`` unused).
    """

    process: MaskedProcess
    schedule: str
    eta: float = 0.0
    logits: Logits = Logits()

    def __post_init__(self):
        require_process(self, MaskedProcess)
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
        raw_BLV = denoise(tokens_BL, times_B(batch, t))
        logp_BLV = self.logits(raw_BLV)
        tok_BL = categorical_BL(keys_BL, TAG_TOKEN, logp_BLV)
        p_unmask_BL = (a_s - (1.0 - sigma_BL) * a_t) / (1.0 - a_t)
        unmask_BL = masked_BL & (uniform_BL(keys_BL, TAG_UNMASK) < p_unmask_BL)
        remask_BL = ~masked_BL & (uniform_BL(keys_BL, TAG_REMASK) < sigma_BL)
        new_BL = jnp.where(remask_BL, self.process.mask_id, tokens_BL)
        new_BL = jnp.where(unmask_BL, tok_BL, new_BL)
        # psi is the model's own probability of the token (the processed one when they agree).
        own_BL = (token_prob_BL(logp_BLV, tok_BL) if self.logits.is_identity
                  else jnp.exp(-token_nll(raw_BLV, tok_BL, raw_BLV.shape[-1])))
        psi_BL = jnp.where(unmask_BL, own_BL, psi_BL)
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
        require_process(self, UniformProcess)
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
