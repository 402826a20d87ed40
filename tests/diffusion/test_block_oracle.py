"""Block diffusion's NELBO (BD3-LM) against exact answers on the tiny distribution (V = 3, L = 4).

With the exact block-conditional denoiser (posterior of block b's clean tokens given the
clean past and the noisy block), the block NELBO integrated over t by Gauss–Legendre, the
expectation over each noisy block enumerated, equals -log p(x) for every one of the 81
sequences: at block sizes 1 (AR over tokens), 2 and 4 (= L, the full-sequence bound). The
library's ``BlockDiffusion`` objective is what computes the integrand, so a wrong mask of
the noisy block, a wrong time per block or a wrong weighting breaks these.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import oracle_reference as ref
import pytest

from dllm_jax.config import special_ids
from dllm_jax.diffusion import (
    BlockDiffusion,
    HybridProcess,
    LogLinear,
    MaskedProcess,
    UniformProcess,
    block_oracle_denoiser,
)

MASK_ID = special_ids(ref.V).mask
NUM_NODES = 256


def make_process(kind: str):
    if kind == "masked":
        return MaskedProcess(ref.V, LogLinear(), mask_id=MASK_ID)
    if kind == "hybrid":
        return HybridProcess(ref.V, LogLinear(), mask_id=MASK_ID, p_uniform=0.2)
    return UniformProcess(ref.V, LogLinear())


def block_states(kind: str, size: int) -> np.ndarray:
    """Every corrupted block in the library's ids: (X, size)."""
    symbols = list(range(ref.V)) + ([MASK_ID] if kind in ("masked", "hybrid") else [])
    return np.array(list(itertools.product(symbols, repeat=size)), np.int32)


def nodes(lo: float, num_nodes: int = NUM_NODES):
    """Gauss–Legendre on [lo, 1] after t = lo + (1 - lo) sin^2(pi s / 2) (nodes bunch at both ends)."""
    x_N, w_N = np.polynomial.legendre.leggauss(num_nodes)
    s_N, w_N = (x_N + 1.0) / 2.0, w_N / 2.0
    t_N = lo + (1.0 - lo) * np.sin(0.5 * np.pi * s_N) ** 2
    return t_N, w_N * (1.0 - lo) * 0.5 * np.pi * np.sin(np.pi * s_N)


@functools.cache
def block_bounds(kind: str, block_size: int, lo: float = 0.0) -> np.ndarray:
    """The block NELBO of every clean sequence by quadrature over [lo, 1]: (S,), float64."""
    with jax.enable_x64(True):
        process = make_process(kind)
        objective = BlockDiffusion(process, block_size)
        oracle = block_oracle_denoiser(process, ref.sequences(), ref.target_probs(), block_size, dtype=jnp.float64)
        clean_SL = jnp.asarray(ref.sequences(), jnp.int32)
        S, n = clean_SL.shape[0], ref.L // block_size
        states_XC = jnp.asarray(block_states(kind, block_size))
        X = states_XC.shape[0]

        def integrand(t):  # (S,): sum over blocks of E_{x_t^b} [block terms]
            total_S = jnp.zeros((S,), jnp.float64)
            for b in range(n):
                blk = slice(b * block_size, (b + 1) * block_size)
                clean_RL = jnp.repeat(clean_SL, X, axis=0)  # row r = (s, x)
                noisy_RL = clean_RL.at[:, blk].set(jnp.tile(states_XC, (S, 1)))
                t_R = jnp.full((S * X,), t)
                lik_RCV = process.likelihood(noisy_RL[:, blk], t_R)
                q_R = jnp.prod(jnp.take_along_axis(lik_RCV, clean_RL[:, blk, None], -1)[..., 0], axis=-1)
                logits_RLV = oracle(noisy_RL, jnp.full((S * X, n), t), clean_BL=clean_RL)
                terms_RC = process.elbo_terms(logits_RLV[:, blk], clean_RL[:, blk], noisy_RL[:, blk], t_R)
                total_S += jnp.sum((q_R * terms_RC.sum(-1)).reshape(S, X), axis=1)
            return total_S

        t_N, w_N = nodes(lo)
        values_NS = jax.jit(lambda t: jax.lax.map(integrand, t, batch_size=32))(jnp.asarray(t_N))
        assert objective.num_blocks(ref.L) == n
        return w_N @ np.asarray(values_NS)


@pytest.mark.parametrize(("kind", "block_size"), [(k, b) for k in ("masked", "uniform") for b in (1, 2, 4)]
                         + [("hybrid", 2)])
def test_block_nelbo_with_the_exact_denoiser_is_minus_log_p(kind, block_size):
    bound_S = block_bounds(kind, block_size)
    nll_S = -np.log(ref.target_probs())
    error = np.abs(bound_S - nll_S).max()
    print(f"\n{kind}, block {block_size}: max |block NELBO - (-log p)| over 81 sequences = {error:.2e}")
    assert error < 1e-6


@pytest.mark.parametrize("stagger", [0.0, 0.5])
def test_the_objective_scores_each_block_at_its_own_time_given_the_clean_past(stagger):
    """``BlockDiffusion.training_loss`` with the oracle, averaged over many draws (each block
    at its own time, drawn through the per-example permutation of strata), is the quadrature
    bound of the same sequences: the Monte-Carlo estimator is unbiased (with staggered
    clocks too, against the piecewise quadrature of ``staggered_bounds``)."""
    with jax.enable_x64(True):
        process = make_process("masked")
        objective = BlockDiffusion(process, 2, stagger=stagger)
        oracle = block_oracle_denoiser(process, ref.sequences(), ref.target_probs(), 2, dtype=jnp.float64)
        picks = [5, 40, 77]
        tokens_1L = jnp.asarray(ref.sequences()[picks], jnp.int32)[:, None]  # one batch of 1 each
        mask_1L = jnp.ones((1, ref.L), bool)

        def one(key, tokens):  # a batch of one example: its u is uniform on [0, 1)
            k_noise, k_u = jax.random.split(key)
            return objective.training_loss(oracle, k_noise[None], tokens, mask_1L, jax.random.uniform(k_u, (1,))).sum()

        keys_D = jax.random.split(jax.random.key(0), 40_000)
        draws_DB = jax.jit(jax.vmap(lambda k: jax.vmap(lambda x, i: one(jax.random.fold_in(k, i), x))(
            tokens_1L, jnp.arange(len(picks)))))(keys_D)
        estimate_B, se_B = draws_DB.mean(0), draws_DB.std(0) / np.sqrt(draws_DB.shape[0])
        # The estimator integrates over [t_min, 1] (the process's training range).
        bound_B = (staggered_bounds(2, stagger, process.t_min) if stagger else block_bounds("masked", 2, process.t_min))[picks]
        z_B = (np.asarray(estimate_B) - bound_B) / np.asarray(se_B)
        print(f"\nMC {np.asarray(estimate_B)} vs quadrature {bound_B}: z = {z_B}")
        assert np.all(np.abs(z_B) < 5)


def segment_nodes(breaks, num_nodes: int = 24):
    """Gauss-Legendre on each segment between consecutive breakpoints. With staggered
    clocks the masked integrand is a polynomial in t on each segment (the oracle is t-free
    and each masked position's weight cancels its masking probability), so this is exact."""
    x_N, w_N = np.polynomial.legendre.leggauss(num_nodes)
    t, w = [], []
    for lo, hi in itertools.pairwise(breaks):
        t.append(lo + (hi - lo) * (x_N + 1.0) / 2.0)
        w.append(w_N * (hi - lo) / 2.0)
    return np.concatenate(t), np.concatenate(w)


@functools.cache
def staggered_bounds(block_size: int, stagger: float, lo: float = 0.0, temperature: float = 1.0) -> np.ndarray:
    """The staggered block NELBO of every sequence over t in [lo, 1], the weights at clocks
    clipped to [lo, 1] as training clips them to [t_min, 1] (lo = 0: the exact bound). The
    denoiser is the oracle's logits over ``temperature`` (1: exact; else a model whose
    conditionals come from no joint, so that reveal orders matter). (S,), float64."""
    with jax.enable_x64(True):
        process = make_process("masked")
        objective = BlockDiffusion(process, block_size, stagger=stagger)
        oracle = block_oracle_denoiser(process, ref.sequences(), ref.target_probs(), block_size, dtype=jnp.float64)
        clean_SL = jnp.asarray(ref.sequences(), jnp.int32)
        S, n = clean_SL.shape[0], ref.L // block_size
        states_XC = jnp.asarray(block_states("masked", block_size))
        X = states_XC.shape[0]
        floor = max(lo, 1e-300)

        def integrand(t):
            total_S = jnp.zeros((S,), jnp.float64)
            tau_RC, rate_RC = objective.stagger_times(jnp.full((S * X,), t))
            for b in range(n):
                blk = slice(b * block_size, (b + 1) * block_size)
                clean_RL = jnp.repeat(clean_SL, X, axis=0)
                noisy_RL = clean_RL.at[:, blk].set(jnp.tile(states_XC, (S, 1)))
                lik_RCV = process.likelihood(noisy_RL[:, blk], tau_RC)
                q_R = jnp.prod(jnp.take_along_axis(lik_RCV, clean_RL[:, blk, None], -1)[..., 0], axis=-1)
                logits_RLV = oracle(noisy_RL, jnp.full((S * X, n), t), clean_BL=clean_RL) / temperature
                terms_RC = process.elbo_terms(logits_RLV[:, blk], clean_RL[:, blk], noisy_RL[:, blk],
                                              jnp.clip(tau_RC, floor, 1.0))
                total_S += jnp.sum((q_R * jnp.where(rate_RC > 0, rate_RC * terms_RC, 0.0).sum(-1)).reshape(S, X), 1)
            return total_S

        width = 1.0 / (1.0 + stagger * (block_size - 1))
        starts = [stagger * (block_size - 1 - j) * width for j in range(block_size)]
        breaks = {lo, 1.0} | {x for a in starts for x in (a, a + width, a + lo * width)}
        t_N, w_N = segment_nodes(sorted(x for x in breaks if lo <= x <= 1.0))
        values_NS = jax.jit(lambda t: jax.lax.map(integrand, t, batch_size=32))(jnp.asarray(t_N))
        return w_N @ np.asarray(values_NS)


@pytest.mark.parametrize(("block_size", "stagger"), [(2, 0.3), (4, 0.5), (4, 1.0)])
def test_staggered_block_nelbo_with_the_exact_denoiser_is_minus_log_p(block_size, stagger):
    error = np.abs(staggered_bounds(block_size, stagger) - (-np.log(ref.target_probs()))).max()
    print(f"\nblock {block_size}, stagger {stagger}: max |NELBO - (-log p)| = {error:.2e}")
    assert error < 1e-6


def left_to_right_nll(block_size: int, temperature: float) -> np.ndarray:
    """Sum over blocks and their positions j of -log of the tempered oracle's law of x_j given
    the clean past and the block's x_{<j} shown, x_{>=j} masked: (S,)."""
    with jax.enable_x64(True):
        process = make_process("masked")
        oracle = block_oracle_denoiser(process, ref.sequences(), ref.target_probs(), block_size, dtype=jnp.float64)
        clean_SL = jnp.asarray(ref.sequences(), jnp.int32)
        S, n = clean_SL.shape[0], ref.L // block_size
        total_S = np.zeros(S)
        for pos in range(ref.L):
            hidden_L = (np.arange(ref.L) >= pos) & (np.arange(ref.L) // block_size == pos // block_size)
            noisy_SL = jnp.where(hidden_L, MASK_ID, clean_SL)
            logp_SV = jax.nn.log_softmax(oracle(noisy_SL, jnp.full((S, n), 0.5), clean_BL=clean_SL)[:, pos] / temperature)
            total_S -= np.asarray(jnp.take_along_axis(logp_SV, clean_SL[:, pos, None], -1)[:, 0])
        return total_S


@pytest.mark.parametrize("block_size", [2, 4])
def test_stagger_one_scores_each_block_left_to_right(block_size):
    """At stagger 1 the windows are disjoint: the block NELBO of *any* denoiser is the NLL of
    its left-to-right conditionals. A tempered oracle (no joint behind it) tells the reveal
    orders apart: stagger 0 averages over all of them and reads differently."""
    reference_S = left_to_right_nll(block_size, temperature=1.7)
    error = np.abs(staggered_bounds(block_size, 1.0, temperature=1.7) - reference_S).max()
    gap = np.abs(staggered_bounds(block_size, 0.0, temperature=1.7) - reference_S).max()
    print(f"\nblock {block_size}: stagger 1 vs left-to-right NLL {error:.2e}; stagger 0 differs by {gap:.3f}")
    assert error < 1e-6
    assert gap > 1e-2
