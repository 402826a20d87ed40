"""Block diffusion (BD3-LM): AR over blocks, a noise process inside each block.

The sequence is cut into blocks of ``block_size`` tokens. Block b is corrupted at its own
time t_b and denoised given the *clean* blocks before it, so the negative ELBO is a sum
over blocks of the process's bound of block b conditioned on x^{<b}:

    -log p(x) = sum_b -log p(x^b | x^{<b})
             <= sum_b int_0^1 E_{x_t^b ~ q_t(.|x^b)} [ sum_{l in b} elbo_terms(x_t^b, x^b, t)_l ] dt.

One network pass computes every block's term: the model's two-stream forward over
[x_t, x_0] (``Transformer.two_stream``), whose mask shows noisy block b itself and the
clean blocks < b, exactly the conditioning of cached block-by-block generation.

Block size 1 is the AR objective (a single masked token's bound integrates to its NLL
given the clean past); block size L is the process's own full-sequence objective (one
block, one t, the same corruption keys: equal to ``process.loss_sums`` of a bidirectional
model with the same weights).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dllm_jax.diffusion.base import NoiseProcess, Objective, soft_token_nll, token_nll
from dllm_jax.diffusion.masked import MaskedProcess, per_position
from dllm_jax.diffusion.times import TimeSampler

_PERMUTE_SALT = 0x424C4B  # "BLK": the per-example permutation of block time strata


@dataclasses.dataclass(frozen=True)
class BlockDiffusion(Objective):
    """The block NELBO of ``process`` with blocks of ``block_size`` tokens.

    Attributes:
      process: the noise process inside a block (masked, uniform, or any ``NoiseProcess``).
      block_size: tokens per block; the sequence length must be a multiple of it.
      times: the training-time sampler (a recipe's; BD3-LM's clipped schedules are
        ``TimeSampler("uniform", low, high)``). None: uniform on [t_min, t_max], the bound.
      weighting: ``elbo`` (the bound's weights) or ``flat`` (cross-entropy on the
        corrupted tokens, normalised by their number).
      context_ar_weight: add this weight times the clean stream's AR loss (position i's
        raw output predicting token i + 1; ``NoiseConfig.context_ar_weight``) to the sums.
        A training objective only: it is no bound, and 0 leaves the block NELBO as it is.
      context_distill: the share of a masked token's target taken from the clean stream's
        AR prediction of it (stop-gradient; ``NoiseConfig.context_distill``) at the masked
        positions past a block's first with nothing visible after them in their block. The
        clean stream conditions on the whole clean past x_{<l}, which contains everything
        the denoiser sees there, so (were it the data's conditional) its prediction is the
        denoiser's target averaged over x_l alone: the same optimum, less variance. Masked
        process only; a training objective, 0 = one-hot targets.
      stagger: the masked process only, in [0, 1]: block position j runs the process's
        clock on its own window of the block time t, tau_j(t) = clip((t - a_j) / w, 0, 1)
        with w = 1 / (1 + stagger (C - 1)) and a_j = stagger (C - 1 - j) w, so later
        positions are masked earlier in t and revealed later (``stagger_times``). 0 is
        BD3-LM (every position at t); 1 makes the windows disjoint: the reveal order is left
        to right and the block NELBO is the AR NLL of the block. In between the bound
        averages over reveal orders biased left to right (and is still a bound: the forward
        process factorises over positions, each term weighted by its own rate). It defines
        the model, as the block size does: evaluation and ``ancestral`` use it.

    Times: example i's uniform u_i (stratified over the global batch) becomes one time per
    block, u_{i,j} = (u_i + pi_i(j)) / n with pi_i a permutation of the n blocks drawn from
    the example's key: the B * n times are stratified over the global batch of blocks, and
    every block position sees the whole range of t.

    ``apply_fn`` is called as ``apply_fn(noisy_BL, t_BN, clean_BL=tokens_BL)`` with t_BN the
    per-block times (B, n): a model ignores them (block models are not time-conditioned),
    an exact oracle reads them.
    """

    process: NoiseProcess
    block_size: int
    times: TimeSampler | None = None
    weighting: str = "elbo"
    context_ar_weight: float = 0.0
    context_distill: float = 0.0
    stagger: float = 0.0

    def __post_init__(self):
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"BlockDiffusion.block_size must be an integer >= 1, got {self.block_size!r}")
        if not 0 <= self.stagger <= 1:
            raise ValueError(f"BlockDiffusion.stagger must be in [0, 1], got {self.stagger!r}")
        if self.stagger and type(self.process) is not MaskedProcess:
            raise ValueError(f"BlockDiffusion.stagger={self.stagger} is for the masked process, "
                             f"got {type(self.process).__name__}")
        if self.weighting not in ("elbo", "flat"):
            raise ValueError(f"BlockDiffusion.weighting must be 'elbo' or 'flat', got {self.weighting!r}")

    @property
    def num_tokens(self) -> int:
        return self.process.num_tokens

    @property
    def sampler(self) -> TimeSampler:
        if self.times is not None:
            return self.times
        return TimeSampler("uniform", self.process.t_min, self.process.t_max)

    def num_blocks(self, length: int) -> int:
        if length % self.block_size:
            raise ValueError(f"sequence length {length} is not a multiple of block_size={self.block_size}")
        return length // self.block_size

    def block_keys_and_uniforms(self, keys_B, u_B, length: int):
        """(keys (B * n,), uniforms (B * n,)) of the n blocks of each example, row-major.

        With a single block these are the example's own key and uniform.
        """
        n = self.num_blocks(length)
        if n == 1:
            return keys_B, u_B
        blocks_N = jnp.arange(n)
        keys_BN = jax.vmap(lambda k: jax.vmap(lambda j: jax.random.fold_in(k, j))(blocks_N))(keys_B)
        perm_BN = jax.vmap(lambda k: jax.random.permutation(jax.random.fold_in(k, _PERMUTE_SALT), n))(keys_B)
        u_BN = (u_B[:, None] + perm_BN) / n
        return keys_BN.reshape(-1), u_BN.reshape(-1)

    def training_loss(self, apply_fn, keys_B, tokens_BL, loss_mask_BL, u_B):
        terms_BL, scored_BL, context_BL = self._terms(apply_fn, keys_B, tokens_BL, loss_mask_BL, u_B)
        return jnp.where(scored_BL, terms_BL, 0.0) + self.context_ar_weight * context_BL

    def loss_sums(self, apply_fn, keys_B, tokens_BL, loss_mask_BL, u_B, progress=0.0):
        del progress
        terms_BL, scored_BL, context_BL = self._terms(apply_fn, keys_B, tokens_BL, loss_mask_BL, u_B)
        total = jnp.sum(jnp.where(scored_BL, terms_BL, 0.0)) + self.context_ar_weight * jnp.sum(context_BL)
        return total, jnp.sum(scored_BL)

    def stagger_times(self, t_R):
        """(tau (R, C), rate (R, C)): each block position's process time at block time t and
        d tau / dt (0 outside its window); with no stagger, (t, 1) per position."""
        C = self.block_size
        if not self.stagger:
            return jnp.broadcast_to(t_R[:, None], t_R.shape + (C,)), jnp.ones(t_R.shape + (C,))
        width = 1.0 / (1.0 + self.stagger * (C - 1))
        start_C = self.stagger * (C - 1 - jnp.arange(C)) * width
        raw_RC = (t_R[:, None] - start_C) / width
        return jnp.clip(raw_RC, 0.0, 1.0), jnp.where((raw_RC > 0) & (raw_RC < 1), 1.0 / width, 0.0)

    def corrupt_blocks(self, keys_B, tokens_BL, loss_mask_BL, u_B):
        """(x_t (B, L) with every block at its own time, the times t_BN (B, n))."""
        B, L = tokens_BL.shape
        n = self.num_blocks(L)
        keys_R, u_R = self.block_keys_and_uniforms(keys_B, u_B, L)
        t_R = self.sampler(u_R)
        clock = self.stagger_times(t_R)[0] if self.stagger else t_R
        noisy_RC = self.process.corrupt(keys_R, tokens_BL.reshape(B * n, self.block_size), clock)
        noisy_BL = jnp.where(loss_mask_BL, noisy_RC.reshape(B, L), tokens_BL)
        return noisy_BL, t_R.reshape(B, n)

    def _terms(self, apply_fn, keys_B, tokens_BL, loss_mask_BL, u_B):
        """(per-position terms, which are scored, the clean stream's AR NLLs (zeros when the
        weight is 0)), all (B, L)."""
        B, L = tokens_BL.shape
        n, C = self.num_blocks(L), self.block_size
        noisy_BL, t_BN = self.corrupt_blocks(keys_B, tokens_BL, loss_mask_BL, u_B)
        context_BL, teacher_BLV = jnp.zeros(tokens_BL.shape), None
        if self.context_ar_weight or self.context_distill:
            logits_BLV, clean_BLV = apply_fn(noisy_BL, t_BN, clean_BL=tokens_BL, with_context=True)
            next_BL = token_nll(clean_BLV[:, :-1], tokens_BL[:, 1:], self.num_tokens)
            context_BL = context_BL.at[:, 1:].set(jnp.where(loss_mask_BL[:, 1:], next_BL, 0.0))
            teacher_BLV = jax.nn.softmax(jax.lax.stop_gradient(clean_BLV[:, :-1]).astype(jnp.float32), axis=-1)
        else:
            logits_BLV = apply_fn(noisy_BL, t_BN, clean_BL=tokens_BL)
        hard_BL = token_nll(logits_BLV, tokens_BL, self.num_tokens)
        change_BL = self._distilled(logits_BLV, teacher_BLV, hard_BL, noisy_BL)  # soft - hard target NLL
        if self.weighting == "flat":
            scored_BL = loss_mask_BL & self.process.denoising_positions(noisy_BL)
            return hard_BL + change_BL, scored_BL, context_BL
        times = self.sampler
        width = times.high - times.low if times.distribution == "uniform" else 1.0
        clock, rate_RC = t_BN.reshape(-1), 1.0
        if self.stagger:  # each position's own clock (kept in the process's range) and rate
            tau_RC, rate_RC = self.stagger_times(clock)
            clock = jnp.clip(tau_RC, max(self.process.t_min, 1e-6), self.process.t_max)  # finite weights
        terms_RC = width * rate_RC * self.process.elbo_terms(
            logits_BLV.reshape(B * n, C, -1), tokens_BL.reshape(B * n, C), noisy_BL.reshape(B * n, C), clock)
        if teacher_BLV is not None and self.context_distill:
            weight_RC = per_position(self.process.weight(clock))
            terms_RC = terms_RC + width * rate_RC * weight_RC * change_BL.reshape(B * n, C)
        return terms_RC.reshape(B, L), loss_mask_BL, context_BL

    def _distilled(self, logits_BLV, teacher_BLV, hard_BL, noisy_BL):
        """``context_distill`` times (the teacher's soft-target NLL - the one-hot NLL) at the
        distilled positions (zero elsewhere, and when there is no distillation), (B, L)."""
        if teacher_BLV is None or not self.context_distill:
            return jnp.zeros(hard_BL.shape)
        B, L = noisy_BL.shape
        soft_BL = jnp.zeros(hard_BL.shape).at[:, 1:].set(soft_token_nll(logits_BLV[:, 1:], teacher_BLV))
        masked_BNC = (noisy_BL == self.process.mask_id).reshape(B, L // self.block_size, self.block_size)
        visible_BNC = (~masked_BNC).astype(jnp.int32)
        visible_after_BNC = jnp.flip(jnp.cumsum(jnp.flip(visible_BNC, -1), -1), -1) - visible_BNC  # at > l
        distilled_BL = (masked_BNC & (visible_after_BNC == 0)
                        & (jnp.arange(self.block_size) > 0)).reshape(B, L)
        return jnp.where(distilled_BL, self.context_distill * (soft_BL - hard_BL), 0.0)


def noise_process(objective):
    """The noise process that samplers step with: a block objective's inner process, or the
    objective itself."""
    return objective.process if isinstance(objective, BlockDiffusion) else objective
