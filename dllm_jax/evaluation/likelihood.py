"""Validation likelihood: the diffusion bound (or AR NLL) with a Monte-Carlo error bar.

The bound is estimated on a deterministic stratified time grid of ``n`` strata: stratum j
evaluates every batch at time offset (j + 0.5) / n, so row r of a batch of B rows sits at
u = (r + (j + 0.5) / n) / B (``make_eval_step``); over all strata the rows cover [0, 1) on
an n * B-point midpoint grid.

Two choices make the strata *independent* replicates of one stratified estimator, so that
their spread is an honest error bar (with one shared noise draw and a fixed row-to-time
assignment, the strata are nearly copies of each other: on the tiny oracle distribution
their spread under-stated the real Monte-Carlo error 30- to 150-fold):

* each stratum permutes the rows of every batch (a fixed seeded permutation), so which
  example sits at which time cell is redrawn per stratum;
* each stratum gives every example its own noise key, by evaluating example index
  ``i * n + j`` (the eval step derives per-example noise from the index).

Neither changes what is estimated: the mean over the n strata is unbiased for the data's
mean bound, up to the midpoint-rule error of the n * B-point time grid.

The CI assumes the stratum means are roughly normal. That held for the masked process;
the uniform process's integrand is heavy-tailed near t = 1 (more so with t_min = 0), and
its CI from few strata under-covers (~0.8 at n = 8 on the oracle test): use n >= 16.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax.diffusion.autoregressive import ARObjective
from dllm_jax.diffusion.base import Objective
from dllm_jax.evaluation.eval_step import make_eval_step
from dllm_jax.progress import Progress

LN2 = math.log(2.0)
Z95 = 1.96  # normal 97.5% quantile
EvalFn = Callable  # (params, batch, u_offset) -> (sum of per-token losses, number of tokens)


@dataclasses.dataclass(frozen=True)
class LikelihoodResult:
    """Validation likelihood of one model on one set of batches.

    Attributes:
      nats_per_token: mean loss per scored token (a bound on the NLL for diffusion; the
        exact NLL for AR).
      ci95: half-width of the 95% Monte-Carlo confidence interval of ``nats_per_token``,
        1.96 * std_j(m_j) / sqrt(n) with m_j the mean loss of time stratum j (sample std,
        ddof=1). 0 for an exact NLL; NaN for a bound from a single stratum. It covers the
        noise and time draws on *this* data only, not the sampling of the data itself;
        with n = 16 the t quantile (2.13) would widen it by ~9%.
      time_points: n, the number of time strata.
      time_samples: n * rows per batch * batches: (example, time) pairs evaluated.
      tokens: scored tokens in the data (loss-mask positions), counted once.
      bits_per_token: nats_per_token / ln 2.
      perplexity: exp(nats_per_token): an upper bound for diffusion, exact for AR.
      exact: True for an AR objective (loss independent of time and noise).
      bits_per_byte: total bits / total UTF-8 bytes of the evaluated text, when the byte
        count was given. Unlike bits/token it does not depend on the tokenizer, so models
        with different vocabularies can be compared on the same text.
    """

    nats_per_token: float
    ci95: float
    time_points: int
    time_samples: int
    tokens: int
    bits_per_token: float
    perplexity: float
    exact: bool
    bits_per_byte: float | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def is_exact(objective: Objective) -> bool:
    """Whether the objective's loss is the exact NLL (no time, no noise): the AR baseline."""
    return isinstance(objective, ARObjective)


@jax.jit
def _stratum_batch(batch, perm_B, time_points, stratum):
    """Rows permuted by ``perm_B``; example i gets noise index i * n + j (distinct per j)."""
    out = {key: jnp.take(value, perm_B, axis=0) for key, value in batch.items()}
    out["index"] = out["index"] * time_points + stratum
    return out


def _permutation(seed: int, batch_number: int, stratum: int, rows: int) -> np.ndarray:
    # The same on every process (a function of its arguments only), so multi-host safe.
    return np.random.default_rng((seed, batch_number, stratum)).permutation(rows).astype(np.int32)


def likelihood_from_sums(
    loss_sums_J: Sequence[float],
    counts_J: Sequence[float],
    rows: int,
    *,
    exact: bool = False,
    num_bytes: int | None = None,
) -> LikelihoodResult:
    """Summarise per-stratum (sum of losses, tokens) into a ``LikelihoodResult``.

    Args:
      loss_sums_J: summed per-token losses of each time stratum (nats), over all batches.
      counts_J: scored tokens of each stratum (the same data, so all equal).
      rows: examples evaluated per stratum (rows per batch * batches).
      exact: the losses are an exact NLL (AR): CI 0.
      num_bytes: UTF-8 bytes of the evaluated text, for bits/byte.

    Raises:
      ValueError: no strata, strata with different token counts, no tokens, or a
        non-positive ``num_bytes``.
    """
    sums_J, counts_J = np.asarray(loss_sums_J, np.float64), np.asarray(counts_J, np.float64)
    if sums_J.ndim != 1 or len(sums_J) == 0 or sums_J.shape != counts_J.shape:
        raise ValueError(
            f"need one loss sum and one count per stratum, got {sums_J.shape} and {counts_J.shape}"
        )
    if np.any(counts_J != counts_J[0]) or counts_J[0] <= 0:
        raise ValueError(
            f"every stratum must score the same positive number of tokens, got {counts_J}"
        )
    if num_bytes is not None and num_bytes <= 0:
        raise ValueError(f"num_bytes must be a positive byte count, got {num_bytes!r}")
    n, tokens = len(sums_J), int(counts_J[0])
    means_J = sums_J / counts_J
    nats = float(means_J.mean())
    if exact:
        ci = 0.0
    elif n < 2:
        ci = math.nan
    else:
        ci = Z95 * float(means_J.std(ddof=1)) / math.sqrt(n)
    return LikelihoodResult(
        nats_per_token=nats,
        ci95=ci,
        time_points=n,
        time_samples=n * rows,
        tokens=tokens,
        bits_per_token=nats / LN2,
        perplexity=math.exp(nats) if nats < 700 else math.inf,
        exact=exact,
        bits_per_byte=None if num_bytes is None else nats * tokens / LN2 / num_bytes,
    )


def stratified_likelihood(
    eval_fn: EvalFn,
    params,
    batches: Iterable[dict],
    time_points: int,
    *,
    exact: bool = False,
    num_bytes: int | None = None,
    seed: int = 0,
    log=None,
) -> LikelihoodResult:
    """The bound of ``eval_fn`` (from ``make_eval_step``) on a stratified time grid.

    Args:
      eval_fn: ``(params, batch, u_offset) -> (loss sum, tokens)``.
      params: the model parameters passed to ``eval_fn``.
      batches: dicts with ``tokens`` (B, L), ``loss_mask`` (B, L), ``index`` (B,); read once.
      time_points: n >= 1 strata with offsets (j + 0.5) / n. Ignored (1 is used) if ``exact``.
      exact: the objective is exact (AR): one unpermuted pass, CI 0.
      num_bytes: UTF-8 bytes of the text the batches hold (see ``utf8_bytes``).
      seed: seeds the per-stratum row permutations.
      log: e.g. ``print``: progress lines while it runs (None: silent).

    Raises:
      ValueError: ``time_points`` < 1, or no batches.
    """
    if not isinstance(time_points, int) or time_points < 1:
        raise ValueError(f"time_points must be a positive integer, got {time_points!r}")
    n = 1 if exact else time_points
    sums, counts, rows = np.zeros(n), np.zeros(n), 0
    batches = list(batches)
    progress = Progress("likelihood batches", len(batches), log)
    for b, batch in enumerate(batches):
        batch_rows = batch["tokens"].shape[0]
        rows += batch_rows
        for j in range(n):
            if exact:
                loss_sum, count = eval_fn(params, batch, 0.5)
            else:
                perm_B = _permutation(seed, b, j, batch_rows)
                loss_sum, count = eval_fn(
                    params, _stratum_batch(batch, perm_B, n, j), (j + 0.5) / n
                )
            sums[j] += float(loss_sum)
            counts[j] += float(count)
        progress.update()
    if rows == 0:
        raise ValueError("no batches to evaluate")
    return likelihood_from_sums(sums, counts, rows, exact=exact, num_bytes=num_bytes)


def evaluate_likelihood(
    objective: Objective,
    graphdef,
    params,
    batches: Iterable[dict],
    mesh,
    *,
    time_points: int = 16,
    seed: int = 0,
    num_bytes: int | None = None,
    log=None,
) -> LikelihoodResult:
    """Validation bound (diffusion) or exact NLL (AR) of a model on ``batches``.

    Builds the eval step with ``make_eval_step(objective, graphdef, mesh, seed)``; an AR
    objective is evaluated once (its loss does not depend on t), with CI 0. ``log`` (e.g.
    ``print``) gets progress lines.
    """
    eval_fn = make_eval_step(objective, graphdef, mesh, seed=seed)
    return stratified_likelihood(
        eval_fn,
        params,
        batches,
        time_points,
        exact=is_exact(objective),
        num_bytes=num_bytes,
        seed=seed,
        log=log,
    )


def token_utf8_lengths(tokenizer) -> np.ndarray:
    """UTF-8 bytes each ordinary token contributes to decoded text: (num_tokens,) int64.

    Byte pieces count 1, control pieces (bos/eos) and unk 0, other pieces the UTF-8 length
    of their text with sentencepiece's whitespace mark read as a space. For the lossless
    tokenizer (``dllm_jax.data.tokenizer``) ``lengths[encode(text)].sum()`` equals
    ``len(text.encode())``. A Hugging Face tokenizer counts its own way (``utf8_lengths``).
    """
    if hasattr(tokenizer, "utf8_lengths"):
        return tokenizer.utf8_lengths()
    sp = tokenizer.processor
    lengths = np.zeros(tokenizer.num_tokens, np.int64)
    for i in range(tokenizer.num_tokens):
        if sp.is_byte(i):
            lengths[i] = 1
        elif not (sp.is_control(i) or sp.is_unknown(i)):
            lengths[i] = len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
    return lengths


def utf8_bytes(tokenizer, batches: Iterable[dict]) -> int:
    """UTF-8 bytes of the text held at the loss-mask positions of ``batches``.

    Special ids (>= num_tokens) count 0. Reads the batches (host copies of global arrays:
    single-process only).
    """
    lengths = np.concatenate([token_utf8_lengths(tokenizer), [0, 0, 0]])
    total = 0
    for batch in batches:
        tokens_BL = np.minimum(np.asarray(batch["tokens"]), len(lengths) - 1)
        total += int(np.where(np.asarray(batch["loss_mask"]), lengths[tokens_BL], 0).sum())
    return total
