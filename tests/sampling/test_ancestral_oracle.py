"""Ancestral samplers with the exact denoiser against an exact numpy reference.

The reference (``tests/oracle_reference.py``) propagates the full distribution over
corrupted sequences through K steps, so the sampler's output distribution is known
exactly: its error to p falls with K, is the independent-positions error at K = 1, and
the JAX sampler's draws must fit it (chi-square), and must not fit a neighbouring K's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import oracle_reference as ref
import pytest
import scipy.stats

from dllm_jax.config import special_ids
from dllm_jax.diffusion import (
    LogLinear,
    MaskedProcess,
    UniformProcess,
    oracle_denoiser,
    sequence_index,
)
from dllm_jax.sampling import ancestral, example_keys, sample

KINDS = ("masked", "uniform")
STEPS = (1, 2, 4, 16, 256)
NUM_SAMPLES = 100_000


def make_process(kind: str):
    if kind == "masked":
        return MaskedProcess(ref.V, LogLinear(), mask_id=special_ids(ref.V).mask)
    return UniformProcess(ref.V, LogLinear())


@functools.cache
def reference(kind: str, num_steps: int) -> np.ndarray:
    return ref.ancestral_reference(kind, num_steps, ref.target_probs())


@functools.cache
def sampled_counts(kind: str, num_steps: int) -> np.ndarray:
    """Counts of each of the 81 sequences among ``NUM_SAMPLES`` JAX sampler draws."""
    process = make_process(kind)
    denoise = oracle_denoiser(process, ref.sequences(), ref.target_probs())
    rule = ancestral(process)
    draw = jax.jit(
        lambda keys_B: sample(denoise, rule, keys_B, length=ref.L, num_steps=num_steps)[0]
    )
    tokens_BL = np.asarray(draw(example_keys(seed=0, index_B=jnp.arange(NUM_SAMPLES))))
    assert tokens_BL.min() >= 0 and tokens_BL.max() < ref.V, "special id left in a sample"
    return np.bincount(sequence_index(tokens_BL, ref.V), minlength=ref.NUM_SEQUENCES)


def chisquare_pvalue(counts_S: np.ndarray, probs_S: np.ndarray) -> float:
    """Goodness of fit of counts to probs; bins expecting fewer than 5 are pooled."""
    expected_S = counts_S.sum() * probs_S / probs_S.sum()
    small = expected_S < 5.0
    obs, exp = list(counts_S[~small]), list(expected_S[~small])
    if small.any():
        obs.append(counts_S[small].sum())
        exp.append(expected_S[small].sum())
    obs, exp = np.array(obs, np.float64), np.array(exp)
    while exp.size > 1 and exp.min() < 5.0:  # the pooled bin itself may still be small
        i, j = np.argsort(exp)[:2]
        obs[j], exp[j] = obs[j] + obs[i], exp[j] + exp[i]
        obs, exp = np.delete(obs, i), np.delete(exp, i)
    return float(scipy.stats.chisquare(obs, exp).pvalue)


def test_target_has_strong_dependence():
    probs_S = ref.target_probs()
    assert np.all(probs_S > 0)
    np.testing.assert_allclose(probs_S.sum(), 1.0, rtol=1e-12)
    assert ref.total_variation(probs_S, ref.product_of_marginals(probs_S)) > 0.3


@pytest.mark.parametrize("kind", KINDS)
def test_reference_error_falls_with_steps(kind):
    probs_S = ref.target_probs()
    tv_K = np.array([ref.total_variation(probs_S, reference(kind, k)) for k in STEPS])
    print(
        f"\n{kind} ancestral, TV to p: "
        + ", ".join(f"K={k}: {v:.4f}" for k, v in zip(STEPS, tv_K, strict=True))
    )
    for k in STEPS:
        np.testing.assert_allclose(reference(kind, k).sum(), 1.0, rtol=1e-12)
    assert np.all(np.diff(tv_K) <= 1e-12)
    # One step from pure noise draws each position from its marginal independently.
    independent = ref.total_variation(probs_S, ref.product_of_marginals(probs_S))
    assert abs(tv_K[0] - independent) < 1e-9
    assert tv_K[-1] < 0.01


@pytest.mark.parametrize("num_steps", [2, 16])
@pytest.mark.parametrize("kind", KINDS)
def test_sampler_matches_reference(kind, num_steps):
    counts_S = sampled_counts(kind, num_steps)
    pvalue = chisquare_pvalue(counts_S, reference(kind, num_steps))
    print(f"\n{kind} K={num_steps}: chi-square p-value vs exact K={num_steps} law {pvalue:.3f}")
    assert pvalue > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_chisquare_rejects_wrong_step_count(kind):
    counts_S = sampled_counts(kind, 2)
    pvalue = chisquare_pvalue(counts_S, reference(kind, 16))
    print(f"\n{kind} K=2 samples vs exact K=16 law: p-value {pvalue:.2e}")
    assert pvalue < 1e-6
