"""The block sampler with the exact cache, driven by the exact block-conditional oracle,
against its enumerated law (V = 3, L = 4, masked process).

``sample_blocks`` runs ``generate``'s block loop: K ancestral steps per block, each block
denoised given the finished blocks held in the cache. With the oracle the law of its
output is computable: the exact propagation of ``tests/oracle_reference.py`` restricted to
one block at a time (positions of other blocks stay as they are: clean before, masked after,
and a mask carries no information). Block size 1 is AR sampling: the law is p itself, at
any K. The draws must fit the law and, where they differ, not fit a neighbour's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import oracle_reference as ref
import pytest
from test_ancestral_oracle import NUM_SAMPLES, chisquare_pvalue

from dllm_jax.config import special_ids
from dllm_jax.diffusion import (
    BlockDiffusion,
    LogLinear,
    MaskedProcess,
    block_oracle_denoiser,
    sequence_index,
)
from dllm_jax.sampling import BlockDenoiser, ancestral, example_keys, sample_blocks

MASK_ID = special_ids(ref.V).mask
PROCESS = MaskedProcess(ref.V, LogLinear(), mask_id=MASK_ID)


class OracleBlocks(BlockDenoiser):
    """The exact block oracle as a ``BlockDenoiser``; its cache is the clean canvas."""

    def __init__(self, block_size: int):
        self.oracle = block_oracle_denoiser(PROCESS, ref.sequences(), ref.target_probs(), block_size)
        self.time_conditioned = self.oracle.time_conditioned
        self.block_size = block_size

    def chunk_logits(self, cache, tokens_BS, x_BC, start, t_B):
        canvas = jax.lax.dynamic_update_slice_in_dim(cache, x_BC, start, axis=1)
        t_BN = jnp.broadcast_to(t_B[:, None], (t_B.shape[0], ref.L // self.block_size))
        logits = self.oracle(canvas, t_BN, clean_BL=cache)
        return jax.lax.dynamic_slice_in_dim(logits, start, x_BC.shape[1], axis=1)

    def write(self, cache, new_BC, start):
        return jax.lax.dynamic_update_slice_in_dim(cache, new_BC, start, axis=1)


def staggered_alphas(t: float, block_size: int, stagger: float) -> np.ndarray:
    """alpha = 1 - tau_j(t) of each block position's clock (``BlockDiffusion.stagger``): (C,)."""
    width = 1.0 / (1.0 + stagger * (block_size - 1))
    start_C = stagger * (block_size - 1 - np.arange(block_size)) * width
    return 1.0 - np.clip((t - start_C) / width, 0.0, 1.0)


@functools.cache
def block_reference(block_size: int, num_steps: int, stagger: float = 0.0) -> np.ndarray:
    """Exact law of K masked ancestral steps per block with the exact block posterior: (81,)."""
    states_XL = ref.sequences(ref.V + 1)
    dist_X = np.zeros(len(states_XL))
    dist_X[-1] = 1.0  # all masked
    # The masked posterior given the unmasked tokens does not depend on t (any 0 < alpha < 1).
    marg_XLV = ref.posterior_marginals("masked", states_XL, ref.target_probs(), 0.5)
    stay_XLN = np.eye(ref.V + 1)[states_XL]
    for start in range(0, ref.L, block_size):
        inside_L = (np.arange(ref.L) >= start) & (np.arange(ref.L) < start + block_size)
        for k in range(num_steps):
            a_t, a_s = 1.0 - (1.0 - k / num_steps), 1.0 - (1.0 - (k + 1) / num_steps)
            if stagger:  # each position's own clock; positions outside the block stay anyway
                a_t, a_s = (np.resize(staggered_alphas(1.0 - x / num_steps, block_size, stagger), ref.L)
                            for x in (k, k + 1))
            kernel = ref.masked_step_kernel(states_XL, marg_XLV, a_t, a_s)
            kernel = np.where(inside_L[None, :, None], kernel, stay_XLN)
            dist_X = dist_X @ ref.transition_matrix(states_XL, kernel)
    clean_X = np.all(states_XL < ref.V, axis=-1)
    assert abs(dist_X[clean_X].sum() - 1.0) < 1e-12
    return dist_X[clean_X]


@functools.cache
def block_counts(block_size: int, num_steps: int, stagger: float = 0.0) -> np.ndarray:
    denoiser = OracleBlocks(block_size)
    rule = ancestral(BlockDiffusion(PROCESS, block_size, stagger=stagger))

    @jax.jit
    def draw(keys_B):
        cache = jnp.zeros((keys_B.shape[0], ref.L), jnp.int32)
        return sample_blocks(denoiser, rule, keys_B, length=ref.L, block_size=block_size,
                             num_steps=num_steps, cache=cache)

    tokens_BL, nfe_B = draw(example_keys(seed=3, index_B=jnp.arange(NUM_SAMPLES)))
    tokens_BL = np.asarray(tokens_BL)
    assert tokens_BL.min() >= 0 and tokens_BL.max() < ref.V
    # K passes per block plus one write per block (the exact cache's cost)
    assert np.all(np.asarray(nfe_B) <= (ref.L // block_size) * (num_steps + 1))
    return np.bincount(sequence_index(tokens_BL, ref.V), minlength=ref.NUM_SEQUENCES)


def test_block_size_1_is_ar_sampling_whatever_the_steps():
    for k in (1, 3):
        np.testing.assert_allclose(block_reference(1, k), ref.target_probs(), atol=1e-12)
    p = chisquare_pvalue(block_counts(1, 1), ref.target_probs())
    print(f"\nblock 1, K=1: chi-square p = {p:.3g} against p itself")
    assert p > 1e-3


@pytest.mark.parametrize(("block_size", "num_steps", "neighbour"), [(2, 1, (4, 1)), (2, 2, (2, 1)), (4, 2, (2, 2))])
def test_block_sampler_with_the_exact_cache_matches_its_enumerated_law(block_size, num_steps, neighbour):
    law, other = block_reference(block_size, num_steps), block_reference(*neighbour)
    gap = ref.total_variation(law, other)
    counts = block_counts(block_size, num_steps)
    p_law, p_other = chisquare_pvalue(counts, law), chisquare_pvalue(counts, other)
    print(f"\nblock {block_size}, K={num_steps}: p = {p_law:.3g} (its law), {p_other:.3g} "
          f"(block {neighbour[0]}, K={neighbour[1]}; TV {gap:.3f}); TV to p {ref.total_variation(law, ref.target_probs()):.3f}")
    assert gap > 0.01
    assert p_law > 1e-3
    assert p_other < 1e-6


def test_stagger_one_with_one_step_per_position_is_ar_sampling():
    """Disjoint clocks (stagger 1) and K = block size: each step reveals exactly the next
    position, so the law is p itself."""
    np.testing.assert_allclose(block_reference(4, 4, 1.0), ref.target_probs(), atol=1e-12)
    p = chisquare_pvalue(block_counts(4, 4, 1.0), ref.target_probs())
    print(f"\nblock 4, K=4, stagger 1: chi-square p = {p:.3g} against p itself")
    assert p > 1e-3


def test_the_staggered_block_sampler_matches_its_enumerated_law():
    """Stagger 0.5, block 4, K = 2: the per-position clocks give a law of their own, which
    the draws fit and the unstaggered sampler's law (same block, same K) does not."""
    law, other = block_reference(4, 2, 0.5), block_reference(4, 2)
    gap = ref.total_variation(law, other)
    counts = block_counts(4, 2, 0.5)
    p_law, p_other = chisquare_pvalue(counts, law), chisquare_pvalue(counts, other)
    print(f"\nblock 4, K=2, stagger 0.5: p = {p_law:.3g} (its law), {p_other:.3g} (stagger 0; TV {gap:.3f}); "
          f"TV to p {ref.total_variation(law, ref.target_probs()):.3f} (stagger 0: "
          f"{ref.total_variation(other, ref.target_probs()):.3f})")
    assert gap > 0.01
    assert p_law > 1e-3
    assert p_other < 1e-6


def test_the_default_fused_write_is_the_write_then_the_read():
    """A denoiser without a one-pass fused write can still run the fused path: the default
    (write the previous block, then read) gives the same tokens and one pass less per block."""

    class Fused(OracleBlocks):
        fuses_writes = True

    keys_B = example_keys(seed=5, index_B=jnp.arange(512))
    runs = {}
    for name, denoiser in (("separate", OracleBlocks(2)), ("fused", Fused(2))):
        cache = jnp.zeros((512, ref.L), jnp.int32)
        runs[name] = sample_blocks(denoiser, ancestral(PROCESS), keys_B, length=ref.L, block_size=2, num_steps=2,
                                   cache=cache)
    np.testing.assert_array_equal(runs["fused"][0], runs["separate"][0])
    np.testing.assert_array_equal(np.asarray(runs["separate"][1]) - np.asarray(runs["fused"][1]), 1)
