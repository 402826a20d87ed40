"""How a diffusion model is *trained*, kept apart from what is *evaluated*.

A ``Recipe`` wraps a noise process with three training choices (``NoiseConfig``):

* the distribution of training times (uniform, clipped to [t_low, t_high] as in BD3-LM's
  clipped schedules, or a bell-shaped logit-normal), always an inverse-CDF map of the
  stratified uniforms, so the batch stays stratified;
* the loss weighting: the ELBO's own (-alpha'/(1 - alpha) per masked token) or flat
  cross-entropy on the corrupted tokens (MaskGIT / LLaDA-style training);
* a share of rows trained with the AR loss on the same backbone under a causal mask.

Only the train step sees a recipe. Evaluation uses the bare process, whose ``loss_sums``
is the ELBO on uniform times, so the reported bound cannot depend on how the model was
trained.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dllm_jax.config import ModelConfig, NoiseConfig
from dllm_jax.diffusion.autoregressive import shift_right
from dllm_jax.diffusion.base import NoiseProcess, Objective, token_nll
from dllm_jax.diffusion.block import BlockDiffusion
from dllm_jax.diffusion.times import TimeSampler  # noqa: F401 (re-exported)


@dataclasses.dataclass(frozen=True)
class Recipe(Objective):
    """A diffusion training objective: ``process`` trained with times, weighting and AR mix.

    Attributes:
      process: the noise process (its ELBO terms and corruption).
      times: the training-time sampler, already intersected with the process's range.
      weighting: ``elbo`` or ``flat`` (see ``NoiseConfig.weighting``).
      ar_fraction: share of rows trained with the AR loss under a causal mask (at step 0).
      ar_fraction_end: the share at the end of training (linear in ``progress``); None =
        ``ar_fraction`` throughout.
      ar_anneal_end: the progress by which ``ar_fraction_end`` is reached (then held).
      bos_id: the AR rows' start token (non-shift models read [bos, x_1 .. x_{L-1}]).
      shift: the model predicts token i at position i - 1 (``ModelConfig.shift``): AR rows
        then read the clean sequence itself and position 0 carries no AR loss.
    """

    process: NoiseProcess
    times: TimeSampler
    weighting: str = "elbo"
    ar_fraction: float = 0.0
    ar_fraction_end: float | None = None
    ar_anneal_end: float = 1.0
    bos_id: int = -1
    shift: bool = False

    @property
    def num_tokens(self) -> int:
        return self.process.num_tokens

    def training_loss(self, apply_fn, keys_B, tokens_BL, loss_mask_BL, u_B):
        """Per-position weighted loss (B, L) at the start of training (``progress`` 0), zero
        where nothing is scored. Its batch mean is ``loss_sums``'s ratio only for ELBO
        weighting: flat weighting divides by the number of corrupted tokens instead."""
        terms_BL, scored_BL = self._terms(apply_fn, keys_B, tokens_BL, loss_mask_BL, u_B, 0.0)
        return jnp.where(scored_BL, terms_BL, 0.0)

    def loss_sums(self, apply_fn, keys_B, tokens_BL, loss_mask_BL, u_B, progress=0.0):
        """(sum of weighted per-token losses, normaliser) of one batch; loss = sum / normaliser.

        ``elbo``: the normaliser is the number of loss tokens (the per-token bound);
        ``flat``: the number of corrupted tokens scored (the mean cross-entropy over them).
        AR rows add their token NLLs and their token count.
        """
        terms_BL, scored_BL = self._terms(apply_fn, keys_B, tokens_BL, loss_mask_BL, u_B, progress)
        return jnp.sum(jnp.where(scored_BL, terms_BL, 0.0)), jnp.sum(scored_BL)

    def _terms(self, apply_fn, keys_B, tokens_BL, loss_mask_BL, u_B, progress):
        """(per-position loss terms, which positions are scored), both (B, L)."""
        process = self.process
        t_B = self.times(u_B)
        noisy_BL = jnp.where(loss_mask_BL, process.corrupt(keys_B, tokens_BL, t_B), tokens_BL)
        causal_B = None
        if self.ar_fraction > 0 or self.ar_fraction_end:
            end = self.ar_fraction if self.ar_fraction_end is None else self.ar_fraction_end
            ramp = jnp.clip(progress / self.ar_anneal_end, 0.0, 1.0)
            share = self.ar_fraction + (end - self.ar_fraction) * ramp
            pick_B = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0x41520)))(keys_B)
            causal_B = pick_B < share
            ar_in_BL = tokens_BL if self.shift else shift_right(tokens_BL, self.bos_id)
            noisy_BL = jnp.where(causal_B[:, None], ar_in_BL, noisy_BL)
            logits_BLV = apply_fn(noisy_BL, t_B, causal_B)
        else:
            logits_BLV = apply_fn(noisy_BL, t_B)
        if self.weighting == "elbo":
            width = self.times.high - self.times.low if self.times.distribution == "uniform" else 1.0
            terms_BL = width * process.elbo_terms(logits_BLV, tokens_BL, noisy_BL, t_B)
            scored_BL = loss_mask_BL
        else:
            scored_BL = loss_mask_BL & process.denoising_positions(noisy_BL)
            terms_BL = token_nll(logits_BLV, tokens_BL, self.num_tokens)
        if causal_B is not None:
            ar_scored_BL = loss_mask_BL
            if self.shift:
                ar_scored_BL = ar_scored_BL & (jnp.arange(tokens_BL.shape[1]) > 0)[None, :]
            ar_BL = token_nll(logits_BLV, tokens_BL, self.num_tokens)
            rows_B1 = causal_B[:, None]
            terms_BL = jnp.where(rows_B1, ar_BL, terms_BL)
            scored_BL = jnp.where(rows_B1, ar_scored_BL, scored_BL)
        return terms_BL, scored_BL


def training_objective(noise: NoiseConfig, model: ModelConfig, objective: Objective) -> Objective:
    """The objective the train step optimises: ``objective`` itself when the recipe is the
    plain ELBO on uniform times with no AR rows (bitwise the old training path), else a
    ``Recipe`` around it."""
    block = objective if isinstance(objective, BlockDiffusion) else None
    process = block.process if block is not None else objective
    if not isinstance(process, NoiseProcess):
        return objective
    plain = (noise.time_distribution == "uniform" and noise.t_low == 0.0 and noise.t_high == 1.0
             and noise.weighting == "elbo" and noise.ar_fraction == 0.0 and not noise.ar_fraction_end
             and not noise.context_ar_weight and not noise.context_distill)
    if plain:
        return objective
    times = TimeSampler(
        noise.time_distribution,
        max(noise.t_low, process.t_min),
        min(noise.t_high, process.t_max),
        noise.logit_mean,
        noise.logit_std,
    )
    if block is not None:  # AR rows are refused for block models by the config
        return dataclasses.replace(block, times=times, weighting=noise.weighting,
                                   context_ar_weight=noise.context_ar_weight,
                                   context_distill=noise.context_distill)
    return Recipe(objective, times, noise.weighting, noise.ar_fraction, noise.ar_fraction_end,
                  noise.ar_anneal_end, bos_id=model.bos_input, shift=model.shift)
