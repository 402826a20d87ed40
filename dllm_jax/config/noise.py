"""The training objective's config: a noise process, its schedule and time sampling."""

from __future__ import annotations

import dataclasses
from typing import Literal

from dllm_jax.validate import check_types, number, one_of

PROCESS_KINDS = ("masked", "uniform", "hybrid", "ar")
UNIFORM_SHARES = ("constant", "decaying")
SCHEDULE_KINDS = ("loglinear", "cosine", "polynomial")
TIME_DISTRIBUTIONS = ("uniform", "logit_normal")
WEIGHTINGS = ("elbo", "flat")


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
    """The training objective: a noise process with its schedule, or the AR baseline.

    The fields below ``t_min`` change how the model is *trained* only. Evaluation always
    reports the true bound (the ELBO integrated over uniform times on [t_min, t_max]).

    Attributes:
      process: ``masked`` (absorbing), ``uniform``, ``hybrid`` (GIDD: a corrupted token is
        the mask or a uniform token) or ``ar``.
      p_uniform: the hybrid's uniform share of the noise, in [0, 1] (0 = masked, 1 with a
        constant share = uniform).
      uniform_share: ``constant`` (u = p_uniform at every t) or ``decaying`` (u = p_uniform
        (1 - t): x_1 all-mask, random tokens mid-trajectory).
      schedule: ``loglinear`` (alpha = 1 - t), ``cosine`` or ``polynomial``.
      exponent: the polynomial schedule's power (alpha = 1 - t**exponent).
      t_min: the bound integrates over [t_min, 1] (masked) or [t_min, 1 - t_min]
        (uniform); uniform training times over that range make the loss unbiased for it.
      time_distribution: how training times are drawn from the stratified uniforms:
        ``uniform`` on [t_low, t_high], or ``logit_normal`` (t = sigmoid(logit_mean +
        logit_std * z), bell-shaped) truncated to [t_low, t_high]. Both map the stratified
        uniforms through an inverse CDF, so the batch stays stratified.
      t_low, t_high: clip training times to [t_low, t_high] (BD3-LM's clipped schedules);
        (0, 1) = no clipping. Intersected with the process's [t_min, t_max].
      logit_mean, logit_std: the logit-normal's location and scale.
      weighting: ``elbo`` (each corrupted token's loss weighted by the ELBO's
        -alpha'/(1 - alpha), normalised by all tokens: the bound itself) or ``flat``
        (plain cross-entropy on the corrupted tokens, averaged over them: MaskGIT/LLaDA-style
        training; for the uniform process every position, since any may be corrupted).
      ar_fraction: this share of the training rows (chosen per example, from its key) is
        trained with the AR loss on the same backbone under a causal mask (Eso-LM-style
        mixing); the rest with the diffusion loss. 0 = pure diffusion.
      ar_fraction_end: the share at the last step, reached linearly from ``ar_fraction``
        at step 0 (a curriculum from AR to diffusion in one run); None = constant.
      ar_anneal_end: the share of training, in (0, 1], by which ``ar_fraction_end`` is
        reached (then held): 0.5 = anneal over the first half, pure end share after.
      context_ar_weight: block-causal models with ``shift`` and ``context_attention=
        "causal"`` only: add this weight times the AR loss of the clean stream (every clean
        position predicts the next token, as the AR model it was adapted from did) to the
        block NELBO while training. 0 = the block NELBO alone. Evaluation is unchanged.
      context_distill: masked block models with a causal context (as for
        ``context_ar_weight``): the share, in [0, 1], of a masked token's training target
        taken from the clean stream's own AR prediction of it (stop-gradient) instead of the
        one-hot data token, at the masked positions with no visible token after them in
        their block. There the AR conditional given the clean past is an unbiased,
        lower-variance estimate of the denoiser's target (a Rao-Blackwellised label).
        0 = one-hot targets. Evaluation is unchanged.
      block_stagger: masked block models only, in [0, 1]: the block positions' clocks are
        staggered so that later positions are masked earlier (``BlockDiffusion.stagger``):
        0 = BD3-LM (one time per block), 1 = the reveal order is left to right (the block
        NELBO is the AR NLL). It defines the model: evaluation reports this bound and the
        ancestral sampler follows the same clocks.
    """

    process: Literal["masked", "uniform", "hybrid", "ar"] = "masked"
    p_uniform: float = 0.0
    uniform_share: Literal["constant", "decaying"] = "constant"
    schedule: Literal["loglinear", "cosine", "polynomial"] = "loglinear"
    exponent: float = 1.0
    t_min: float = 1e-3
    time_distribution: Literal["uniform", "logit_normal"] = "uniform"
    t_low: float = 0.0
    t_high: float = 1.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    weighting: Literal["elbo", "flat"] = "elbo"
    ar_fraction: float = 0.0
    ar_fraction_end: float | None = None
    ar_anneal_end: float = 1.0
    context_ar_weight: float = 0.0
    context_distill: float = 0.0
    block_stagger: float = 0.0

    def __post_init__(self):
        check_types(self)
        self._check_kinds()
        self._check_times()
        self._check_ar_mix()

    def _check_kinds(self):
        """Process, schedule, weighting and the hybrid knob."""
        one_of(self, "process", PROCESS_KINDS)
        one_of(self, "schedule", SCHEDULE_KINDS)
        one_of(self, "time_distribution", TIME_DISTRIBUTIONS)
        one_of(self, "weighting", WEIGHTINGS)
        one_of(self, "uniform_share", UNIFORM_SHARES)
        if not 0 <= number(self, "p_uniform") <= 1:
            raise ValueError(f"NoiseConfig.p_uniform must be in [0, 1], got {self.p_uniform}")
        if self.p_uniform and self.process != "hybrid":
            raise ValueError(
                f"NoiseConfig.p_uniform={self.p_uniform} is the hybrid process's knob; set process='hybrid' "
                f"(got process={self.process!r})"
            )

    def _check_times(self):
        """The schedule exponent, time ranges and the logit-normal time law."""
        for name in ("exponent", "t_min", "t_low", "t_high", "logit_mean", "logit_std", "ar_fraction"):
            number(self, name)
        if not self.exponent > 0:
            raise ValueError(f"NoiseConfig.exponent must be > 0, got {self.exponent}")
        if not 0 <= self.t_min < 0.5:
            raise ValueError(f"NoiseConfig.t_min must be in [0, 0.5), got {self.t_min}")
        if not 0 <= self.t_low < self.t_high <= 1:
            raise ValueError(
                f"NoiseConfig.t_low and t_high must satisfy 0 <= t_low < t_high <= 1, got "
                f"t_low={self.t_low}, t_high={self.t_high}"
            )
        uniform_noise = self.process == "uniform" or (self.process == "hybrid" and self.p_uniform > 0)
        t_max = 1.0 - self.t_min if uniform_noise else 1.0
        if self.process != "ar" and (self.t_high <= self.t_min or self.t_low >= t_max):
            raise ValueError(
                f"NoiseConfig training range [t_low={self.t_low}, t_high={self.t_high}] does not "
                f"overlap the process's range [t_min={self.t_min}, {t_max}]"
            )
        if not self.logit_std > 0:
            raise ValueError(f"NoiseConfig.logit_std must be > 0, got {self.logit_std}")

    def _check_ar_mix(self):
        """The AR share of training (constant or annealed) and the AR objective."""
        if self.ar_fraction_end is None:
            if not 0 <= self.ar_fraction < 1:
                raise ValueError(f"NoiseConfig.ar_fraction must be in [0, 1), got {self.ar_fraction}")
        else:
            number(self, "ar_fraction_end")
            if not 0 <= self.ar_fraction <= 1:
                raise ValueError(f"NoiseConfig.ar_fraction must be in [0, 1], got {self.ar_fraction}")
            if not 0 <= self.ar_fraction_end < 1:
                raise ValueError(
                    f"NoiseConfig.ar_fraction_end must be in [0, 1) (the run must end training "
                    f"diffusion), got {self.ar_fraction_end}"
                )
        if not 0 < number(self, "ar_anneal_end") <= 1:
            raise ValueError(f"NoiseConfig.ar_anneal_end must be in (0, 1], got {self.ar_anneal_end}")
        if not number(self, "context_ar_weight") >= 0:
            raise ValueError(f"NoiseConfig.context_ar_weight must be >= 0, got {self.context_ar_weight}")
        if not 0 <= number(self, "context_distill") <= 1:
            raise ValueError(f"NoiseConfig.context_distill must be in [0, 1], got {self.context_distill}")
        if not 0 <= number(self, "block_stagger") <= 1:
            raise ValueError(f"NoiseConfig.block_stagger must be in [0, 1], got {self.block_stagger}")
        if self.block_stagger and self.process != "masked":
            raise ValueError(f"NoiseConfig.block_stagger={self.block_stagger} staggers the masked process's "
                             f"clocks; it needs process='masked', got {self.process!r}")
        if self.process == "ar":
            recipe = {"time_distribution": "uniform", "t_low": 0.0, "t_high": 1.0,
                      "weighting": "elbo", "ar_fraction": 0.0, "ar_fraction_end": None,
                      "ar_anneal_end": 1.0}
            changed = [f"{k}={getattr(self, k)!r}" for k, v in recipe.items() if getattr(self, k) != v]
            if changed:
                raise ValueError(
                    f"NoiseConfig.process='ar' has no noise to shape; these diffusion training "
                    f"options must keep their defaults: {', '.join(changed)}"
                )
