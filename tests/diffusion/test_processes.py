"""Forward corruption of the masked and uniform processes: rates, noise distribution,
per-example keys."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dllm_jax.config import NoiseConfig, special_ids
from dllm_jax.diffusion import make_objective
from dllm_jax.sampling import example_keys

V = 7
MASK = special_ids(V).mask
TIMES = (0.05, 0.3, 0.5, 0.8, 0.97)
NUM_POSITIONS = 20_000  # per time


def _process(kind: str, schedule: str = "cosine"):
    # Cosine: alpha(t) != 1 - t, so using t where alpha(t) belongs is caught.
    return make_objective(NoiseConfig(process=kind, schedule=schedule), V)


def _corrupt(process, keys_B, tokens_BL, t_B):
    """``process.corrupt`` under jit: one compile per shape instead of one per eager op."""
    return np.asarray(jax.jit(process.corrupt)(keys_B, tokens_BL, t_B))


def _corrupt_rows(process, seed=0):
    """Clean tokens (B, L), one row per time in TIMES, and their corruption."""
    batch = len(TIMES)
    tokens_BL = jax.random.randint(jax.random.key(seed), (batch, NUM_POSITIONS), 0, V)
    t_B = jnp.asarray(TIMES, jnp.float32)
    noisy_BL = _corrupt(process, example_keys(seed, jnp.arange(batch)), tokens_BL, t_B)
    return np.asarray(tokens_BL), noisy_BL, np.asarray(process.schedule.alpha(t_B))


def _assert_rate(observed_B, expected_B, n):
    se_B = np.sqrt(expected_B * (1 - expected_B) / n)
    z_B = (observed_B - expected_B) / se_B
    assert np.all(np.abs(z_B) < 4), (observed_B, expected_B, z_B)


def test_masked_corruption_rate():
    process = _process("masked")
    tokens_BL, noisy_BL, alpha_B = _corrupt_rows(process)
    is_mask_BL = noisy_BL == MASK
    # A position is either kept exactly or replaced by the mask id.
    np.testing.assert_array_equal(noisy_BL[~is_mask_BL], tokens_BL[~is_mask_BL])
    _assert_rate(is_mask_BL.mean(axis=1), 1 - alpha_B, NUM_POSITIONS)


def test_uniform_corruption_rate():
    process = _process("uniform")
    tokens_BL, noisy_BL, alpha_B = _corrupt_rows(process)
    assert noisy_BL.min() >= 0 and noisy_BL.max() < V
    # A dropped token is redrawn uniformly, so it changes with probability 1 - 1/V.
    changed_B = (noisy_BL != tokens_BL).mean(axis=1)
    _assert_rate(changed_B, (1 - alpha_B) * (1 - 1 / V), NUM_POSITIONS)


@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
def test_uniform_noise_is_uniform_over_ordinary_ids(schedule):
    # alpha(1) = 0: every position is noise. Clean tokens all 0, so any bias towards the
    # clean token (or towards special ids, or away from V - 1) shows up in the counts.
    process = _process("uniform", schedule)
    batch, length = 8, 5_000
    tokens_BL = jnp.zeros((batch, length), jnp.int32)
    noisy_BL = _corrupt(process, example_keys(3, jnp.arange(batch)), tokens_BL, jnp.ones(batch))
    counts = np.bincount(noisy_BL.ravel(), minlength=V)
    assert counts.size == V, counts  # no id >= V
    result = stats.chisquare(counts)
    assert result.pvalue > 1e-4, (counts, result)


def test_uniform_prior_is_uniform_over_ordinary_ids():
    process = _process("uniform")
    prior_BL = process.prior(example_keys(4, jnp.arange(8)), 5_000)
    counts = np.bincount(np.asarray(prior_BL).ravel(), minlength=V)
    assert counts.size == V, counts
    assert stats.chisquare(counts).pvalue > 1e-4, counts


@pytest.mark.parametrize("kind", ["masked", "uniform"])
def test_corruption_depends_only_on_each_examples_key(kind):
    process = _process(kind)
    index_B = np.arange(8)
    tokens_BL = np.asarray(jax.random.randint(jax.random.key(7), (8, 64), 0, V))
    t_B = np.linspace(0.1, 0.9, 8, dtype=np.float32)
    full_BL = _corrupt(process, example_keys(0, index_B), tokens_BL, t_B)
    # Example 3 alone, and example 3 placed first among other examples.
    alone_BL = _corrupt(process, example_keys(0, index_B[3:4]), tokens_BL[3:4], t_B[3:4])
    np.testing.assert_array_equal(alone_BL[0], full_BL[3])
    order = np.array([3, 6, 1])
    mixed_BL = _corrupt(process, example_keys(0, index_B[order]), tokens_BL[order], t_B[order])
    np.testing.assert_array_equal(mixed_BL, full_BL[order])
    # Different examples with the same clean tokens and time get different noise.
    same_BL = _corrupt(
        process, example_keys(0, index_B[:2]), np.stack([tokens_BL[0]] * 2), np.full(2, 0.5)
    )
    assert (same_BL[0] != same_BL[1]).any()
