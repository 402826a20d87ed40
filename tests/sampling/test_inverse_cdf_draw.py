"""The samplers' token draw (``categorical_BL``, two-level inverse CDF from two uniforms per
position) is the categorical law: a chi-square fit over 1,000 tokens with -inf entries, and
the 50,000-token tail regime of ``test_exact_categorical`` (half the mass spread at 1e-5
per token) keeps its share; the drawn token's log-probability from the same pass, and the
pair-count ranks, equal their slow references."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dllm_jax.sampling.draws import categorical_BL, categorical_logp_BL
from dllm_jax.sampling.scores import PAIRWISE_RANK_MAX_LEN, rank_BL


def _draws(logits_V, n, seed, method="inverse_cdf"):
    keys = jax.random.split(jax.random.key(seed), n).reshape(n, 1)

    @jax.jit
    def run(k):
        return categorical_BL(k, 1, jnp.broadcast_to(logits_V, (k.shape[0], 1, logits_V.shape[0])), method)

    return np.concatenate([np.asarray(run(keys[i : i + 20_000])).ravel() for i in range(0, n, 20_000)])


@pytest.mark.parametrize("method", ["inverse_cdf", "gumbel"])
def test_draws_fit_the_categorical_law(method):
    V, n = 1000, 200_000
    logits = 2.0 * jax.random.normal(jax.random.key(0), (V,))
    logits = logits.at[jnp.array([5, 999, 400])].set(-jnp.inf)  # excluded tokens (top-k / top-p)
    toks = _draws(logits, n, seed=1, method=method)
    p = np.asarray(jax.nn.softmax(logits), np.float64)
    assert not np.isin(toks, [5, 999, 400]).any()
    counts = np.bincount(toks, minlength=V)
    keep = p > 0
    # pool tokens with expected count < 5 into one cell (chi-square validity)
    small = keep & (p * n < 5)
    obs = np.append(counts[keep & ~small], counts[small].sum())
    exp = np.append(p[keep & ~small], p[small].sum())
    exp = exp / exp.sum() * n
    pval = stats.chisquare(obs, exp).pvalue
    print(f"{method}: chi-square p-value {pval:.3f} over {len(obs)} cells")
    assert pval > 1e-3


def test_the_tail_of_50k_tokens_keeps_its_share():
    V, n = 50_000, 40_000
    q_tail = 0.5 / (V - 1)
    logits = jnp.full((V,), math.log(q_tail)).at[0].set(math.log(0.5))
    toks = _draws(logits, n, seed=2)
    share = float(np.mean(toks != 0))
    se = math.sqrt(0.25 / n)
    print(f"tail share {share:.4f} (true 0.5, se {se:.4f}); distinct tail tokens {len(np.unique(toks)) - 1}")
    assert abs(share - 0.5) < 4 * se
    # and it is spread over the tail, not stuck on a few tokens: ~n/2 draws over 49,999 tokens
    assert len(np.unique(toks)) > 0.95 * (V - 1) * (1 - math.exp(-n / 2 / (V - 1)))


@pytest.mark.parametrize("method", ["inverse_cdf", "gumbel"])
def test_the_drawn_tokens_log_probability_is_the_log_softmax(method):
    """``categorical_logp_BL``: the same tokens as ``categorical_BL`` and, from the draw's own
    pass, log softmax(logits)[token] (unnormalised logits, -inf entries, two vocabulary sizes)."""
    for V in (50, 1000):
        logits_BLV = 3.0 * jax.random.normal(jax.random.key(V), (3, 40, V)) + 7.0
        logits_BLV = logits_BLV.at[:, :, :V // 3].set(-jnp.inf)
        keys_BL = jax.random.split(jax.random.key(2), 120).reshape(3, 40)
        tok, logp = categorical_logp_BL(keys_BL, 4, logits_BLV, method)
        np.testing.assert_array_equal(tok, categorical_BL(keys_BL, 4, logits_BLV, method))
        want = jnp.take_along_axis(jax.nn.log_softmax(logits_BLV), tok[..., None], axis=-1)[..., 0]
        assert int(jnp.min(tok)) >= V // 3  # never a token of probability 0
        np.testing.assert_allclose(logp, want, atol=2e-5)


@pytest.mark.parametrize("length", [48, PAIRWISE_RANK_MAX_LEN + 8])
def test_ranks_by_pair_counts_equal_ranks_by_sorting(length):
    """``rank_BL`` (pair counts up to PAIRWISE_RANK_MAX_LEN positions, sorting beyond) equals
    the stable double argsort: descending score, ties to the lower position, non-candidates last."""
    score = jnp.round(jax.random.uniform(jax.random.key(0), (4, length)), 1)  # many ties
    score = score.at[0, 3].set(jnp.nan)  # a NaN score ranks with the non-candidates (a sort's last)
    candidate = jax.random.bernoulli(jax.random.key(1), 0.6, (4, length)).at[0, 3].set(True)
    key = jnp.where(candidate & ~jnp.isnan(score), -score, jnp.inf)
    want = np.argsort(np.argsort(np.asarray(key), axis=-1, kind="stable"), axis=-1)
    np.testing.assert_array_equal(rank_BL(score, candidate), want)
