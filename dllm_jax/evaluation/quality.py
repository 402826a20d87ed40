"""Sample quality: generative perplexity under a judge, entropy, distinct-n, repetition.

Conventions (all metrics): a sample is cut at its first ``eos``; anything after it is
ignored, and a sample without ``eos`` is used whole. ``pad`` ids are never counted.

* The judge scores the *scored tokens*: the content tokens and the first ``eos`` itself
  (ending the text is part of its likelihood), teacher-forced after ``bos``.
* The counting metrics (entropy, distinct-n, repetition, mean length) use the *content
  tokens*: those before the first ``eos``, pads dropped.

Counting runs in numpy on host; the judge's forward passes run in JAX, jitted and batched.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dllm_jax.diffusion.autoregressive import shift_right
from dllm_jax.nn.model import apply_model

JudgeFn = Callable[[jax.Array], jax.Array]  # tokens_BL -> logits_BLV of a causal model


# ---------------------------------------------------------------------------- judges


def judge_from_model(graphdef, params) -> JudgeFn:
    """``judge_logits_fn`` of a causal Transformer given as (graphdef, params).

    The forward pass is jitted with the params as an argument (not baked into the HLO).

    Raises:
      ValueError: the model is not causal (teacher forcing through a model that sees the
        future would score it too well), or is time-conditioned.
    """
    cfg = _model_config(graphdef, params)
    if cfg.attention != "causal" or cfg.time_conditioning:
        raise ValueError(
            f"a judge must be a causal model without time conditioning, got attention="
            f"{cfg.attention!r}, time_conditioning={cfg.time_conditioning}"
        )
    forward = jax.jit(lambda p, tokens_BL: apply_model(graphdef, p, tokens_BL, None))

    def judge_logits_fn(tokens_BL):
        if tokens_BL.shape[1] > cfg.max_len:
            raise ValueError(
                f"the judge takes at most {cfg.max_len} tokens, got length {tokens_BL.shape[1]}"
            )
        return forward(params, tokens_BL)

    return judge_logits_fn


def _model_config(graphdef, params):
    return nnx.merge(graphdef, params, copy=True).config


@dataclasses.dataclass(frozen=True)
class Judge:
    """A judge loaded from a run: its logits function, tokenizer and token ids."""

    logits_fn: JudgeFn
    tokenizer: object
    eos_id: int
    bos_id: int
    pad_id: int
    step: int


# ---------------------------------------------------------------------------- masks


def _check_samples(samples_BL) -> np.ndarray:
    samples_BL = np.asarray(samples_BL)
    if samples_BL.ndim != 2 or not np.issubdtype(samples_BL.dtype, np.integer):
        raise ValueError(
            f"samples must be a (B, L) integer array, got {samples_BL.dtype} {samples_BL.shape}"
        )
    if samples_BL.shape[0] == 0:
        raise ValueError("no samples")
    return samples_BL


def _equals(samples_BL, token_id: int | None) -> np.ndarray:
    return np.zeros(samples_BL.shape, bool) if token_id is None else samples_BL == token_id


def scored_mask(samples_BL, eos_id: int | None, pad_id: int | None) -> np.ndarray:
    """(B, L) bool: positions up to and including the first eos, pads excluded.

    ``None`` for an id means the vocabulary has no such token.
    """
    samples_BL = _check_samples(samples_BL)
    is_eos = _equals(samples_BL, eos_id)
    before_first_eos = np.cumsum(is_eos, axis=1) - is_eos == 0  # no eos strictly before
    return before_first_eos & ~_equals(samples_BL, pad_id)


def content_tokens(samples_BL, eos_id: int | None, pad_id: int | None) -> list[np.ndarray]:
    """Each sample's tokens before its first eos, pads dropped."""
    samples_BL = _check_samples(samples_BL)
    keep_BL = scored_mask(samples_BL, eos_id, pad_id) & ~_equals(samples_BL, eos_id)
    return [row[keep] for row, keep in zip(samples_BL, keep_BL, strict=True)]


# ---------------------------------------------------------------------------- judge NLL


@jax.jit
def _token_nll(logits_BLV, targets_BL, mask_BL):
    logp_BLV = jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)
    safe_BL = jnp.where(mask_BL, targets_BL, 0)
    nll_BL = -jnp.take_along_axis(logp_BLV, safe_BL[..., None], axis=-1)[..., 0]
    return jnp.where(mask_BL, nll_BL, 0.0)


def judge_nll(
    judge_logits_fn: JudgeFn,
    samples_BL,
    eos_id: int,
    bos_id: int,
    pad_id: int,
    batch_size: int = 64,
):
    """Per-sample NLL (nats) of the scored tokens under a causal judge, teacher-forced.

    The judge reads ``[bos, x_1 .. x_{L-1}]`` and its logits at position l score x_l.

    Args:
      judge_logits_fn: ``tokens_BL -> logits_BLV`` of a causal model (e.g. from
        ``judge_from_model``); called on chunks of ``batch_size`` rows (the last chunk is
        padded, so one compile serves all).
      samples_BL: (B, L) token ids.
      eos_id, bos_id, pad_id: the judge's ids.

    Returns:
      (nll_B float64, tokens_B int64): summed NLL and number of scored tokens per sample.
    """
    samples_BL = _check_samples(samples_BL).astype(np.int32)
    mask_BL = scored_mask(samples_BL, eos_id, pad_id)
    B = samples_BL.shape[0]
    chunk = min(batch_size, B)
    nll_B = np.zeros(B, np.float64)
    for start in range(0, B, chunk):
        rows = np.arange(start, min(start + chunk, B))
        padded = np.concatenate([rows, np.full(chunk - len(rows), rows[0])])
        tokens_BL, m_BL = samples_BL[padded], mask_BL[padded]
        logits_BLV = judge_logits_fn(shift_right(jnp.asarray(tokens_BL), bos_id))
        if np.any(tokens_BL[m_BL] >= logits_BLV.shape[-1]) or np.any(tokens_BL[m_BL] < 0):
            raise ValueError(
                f"samples hold ids outside the judge's vocabulary [0, {logits_BLV.shape[-1]})"
            )
        per_token = np.asarray(_token_nll(logits_BLV, tokens_BL, m_BL), np.float64)
        nll_B[rows] = per_token[: len(rows)].sum(axis=1)
    return nll_B, mask_BL.sum(axis=1).astype(np.int64)


def generative_perplexity(nll_B, tokens_B) -> float:
    """Corpus-level exp(sum of NLL / sum of scored tokens)."""
    total = float(np.sum(tokens_B))
    if total <= 0:
        raise ValueError("no scored tokens: generative perplexity is undefined")
    return math.exp(float(np.sum(nll_B)) / total)


# ---------------------------------------------------------------------------- counting


def _entropy(counts) -> float:
    p = np.asarray(list(counts), np.float64)
    p = p / p.sum()
    return float(-(p * np.log(p)).sum())


def unigram_entropy(
    samples_BL, *, eos_id: int | None = None, pad_id: int | None = None
) -> tuple[float, float]:
    """(mean per-sample entropy, corpus entropy) of token histograms, in nats.

    Per sample: the entropy of its content-token histogram (MDLM / ReMDM convention; low
    values flag repetitive text); an empty sample counts 0. Corpus: the entropy of the
    pooled histogram.
    """
    rows = content_tokens(samples_BL, eos_id, pad_id)
    per_sample = [_entropy(Counter(r.tolist()).values()) if len(r) else 0.0 for r in rows]
    pooled = Counter(np.concatenate(rows).tolist()) if rows else Counter()
    return float(np.mean(per_sample)) if rows else math.nan, _entropy(
        pooled.values()
    ) if pooled else math.nan


def _ngrams(row: np.ndarray, n: int) -> list[tuple[int, ...]]:
    return [tuple(row[i : i + n].tolist()) for i in range(len(row) - n + 1)]


def distinct_n(
    samples_BL, n: int, *, eos_id: int | None = None, pad_id: int | None = None
) -> float:
    """Unique n-grams / all n-grams, pooled over the corpus (each sample's content tokens)."""
    grams = [g for r in content_tokens(samples_BL, eos_id, pad_id) for g in _ngrams(r, n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def repetition_rate(
    samples_BL, n: int = 4, *, eos_id: int | None = None, pad_id: int | None = None
) -> float:
    """Share of n-grams that already occurred earlier in the same sample, pooled."""
    repeated = total = 0
    for r in content_tokens(samples_BL, eos_id, pad_id):
        seen = set()
        for g in _ngrams(r, n):
            repeated += g in seen
            seen.add(g)
            total += 1
    return repeated / total if total else math.nan


def quality_report(
    samples_BL,
    *,
    eos_id: int | None,
    pad_id: int | None,
    judge_logits_fn: JudgeFn | None = None,
    bos_id: int | None = None,
    batch_size: int = 64,
) -> dict:
    """All sample-quality numbers in one dict.

    Keys: ``gen_ppl``, ``nll`` (mean judge NLL per scored token, nats), ``tokens`` (scored
    tokens) — None without a judge —, ``entropy``, ``corpus_entropy``, ``distinct_1`` ..
    ``distinct_4``, ``rep_4``, ``num_samples``, ``mean_length`` (content tokens).
    """
    samples_BL = _check_samples(samples_BL)
    ids = {"eos_id": eos_id, "pad_id": pad_id}
    entropy, corpus_entropy = unigram_entropy(samples_BL, **ids)
    report = {"gen_ppl": None, "nll": None, "tokens": None}
    if judge_logits_fn is not None:
        if bos_id is None:
            raise ValueError("scoring with a judge needs its bos_id")
        nll_B, tokens_B = judge_nll(judge_logits_fn, samples_BL, eos_id, bos_id, pad_id, batch_size)
        report.update(
            gen_ppl=generative_perplexity(nll_B, tokens_B),
            nll=float(nll_B.sum() / tokens_B.sum()),
            tokens=int(tokens_B.sum()),
        )
    report.update(entropy=entropy, corpus_entropy=corpus_entropy)
    report.update({f"distinct_{n}": distinct_n(samples_BL, n, **ids) for n in range(1, 5)})
    report.update(
        rep_4=repetition_rate(samples_BL, 4, **ids),
        num_samples=int(samples_BL.shape[0]),
        mean_length=float(np.mean([len(r) for r in content_tokens(samples_BL, eos_id, pad_id)])),
    )
    return report
