"""Evaluation: validation likelihood (bound, CI, bits/byte) and sample quality."""

from dllm_jax.evaluation.likelihood import (
    LikelihoodResult,
    evaluate_likelihood,
    is_exact,
    likelihood_from_sums,
    stratified_likelihood,
    token_utf8_lengths,
    utf8_bytes,
)
from dllm_jax.evaluation.quality import (
    Judge,
    content_tokens,
    distinct_n,
    generative_perplexity,
    judge_from_model,
    judge_nll,
    quality_report,
    repetition_rate,
    scored_mask,
    unigram_entropy,
)
from dllm_jax.evaluation.revision import Revisions, revision_meter

__all__ = [
    "Judge",
    "LikelihoodResult",
    "content_tokens",
    "distinct_n",
    "evaluate_likelihood",
    "generative_perplexity",
    "is_exact",
    "judge_from_model",
    "judge_nll",
    "likelihood_from_sums",
    "quality_report",
    "repetition_rate",
    "Revisions",
    "revision_meter",
    "scored_mask",
    "stratified_likelihood",
    "token_utf8_lengths",
    "unigram_entropy",
    "utf8_bytes",
]
