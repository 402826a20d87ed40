"""The continuous-time ELBOs against exact answers on a tiny distribution (V = 3, L = 4).

With the exact denoiser the bound is tight: integrated over t (Gauss–Legendre) with the
expectation over x_t computed by enumerating every corrupted state, it equals -log p(x)
for each of the 81 sequences. A wrong weight, a wrong likelihood or a wrong ratio breaks
this. A perturbed denoiser pays, on average over p, exactly the expected divergence
between its posterior and the true one. The Monte-Carlo training loss is unbiased for the
truncated integral over [t_min, t_max].
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import oracle_reference as ref
import pytest

from dllm_jax.config import special_ids
from dllm_jax.diffusion import (
    Cosine,
    LogLinear,
    MaskedProcess,
    UniformProcess,
    oracle_denoiser,
    stratified_uniforms,
)

MASK_ID = special_ids(ref.V).mask
NUM_NODES = 128
SCHEDULES = {"loglinear": LogLinear(), "cosine": Cosine()}
CASES = [(kind, name) for kind in ("masked", "uniform") for name in SCHEDULES]
# A fixed perturbation of the denoiser's logits at corrupted positions: (L, V).
DELTA_LV = 0.5 * np.random.default_rng(1).normal(size=(ref.L, ref.V))


def make_process(kind: str, schedule_name: str):
    schedule = SCHEDULES[schedule_name]
    if kind == "masked":
        return MaskedProcess(ref.V, schedule, mask_id=MASK_ID)
    return UniformProcess(ref.V, schedule)


def noisy_states(kind: str) -> np.ndarray:
    """Every corrupted sequence x_t in the library's ids: (X, L)."""
    if kind == "masked":
        states_XL = ref.sequences(ref.V + 1)
        return np.where(states_XL == ref.MASK_SYMBOL, MASK_ID, states_XL)
    return ref.sequences(ref.V)


def make_denoiser(process, kind: str, perturbed: bool):
    """The exact denoiser in float64, optionally plus ``DELTA_LV`` at corrupted positions."""
    oracle = oracle_denoiser(process, ref.sequences(), ref.target_probs(), dtype=jnp.float64)
    if not perturbed:
        return oracle

    def denoise(noisy_BL, t_B):
        corrupted_BL = noisy_BL == MASK_ID if kind == "masked" else jnp.ones(noisy_BL.shape, bool)
        return oracle(noisy_BL, t_B) + jnp.where(corrupted_BL[..., None], DELTA_LV, 0.0)

    return denoise


def expected_integrand(process, denoise, noisy_XL, t):
    """E_{x_t ~ q_t(. | x)} sum_l elbo_terms(x_t, x, t)_l for every clean x: (S,)."""
    tokens_SL = jnp.asarray(ref.sequences(), jnp.int32)
    num_x, num_s = noisy_XL.shape[0], tokens_SL.shape[0]
    t_X = jnp.full((num_x,), t)
    lik_XLV = process.likelihood(noisy_XL, t_X)
    # q_t(x_t | x) = prod_l q_t(x_t^l | x_l)
    q_XS = jnp.prod(lik_XLV[:, jnp.arange(ref.L)[None], tokens_SL], axis=-1)
    logits_XLV = denoise(noisy_XL, t_X)
    terms_P = process.elbo_terms(
        jnp.repeat(logits_XLV, num_s, axis=0),
        jnp.tile(tokens_SL, (num_x, 1)),
        jnp.repeat(noisy_XL, num_s, axis=0),
        jnp.full((num_x * num_s,), t),
    ).sum(-1)
    return jnp.sum(q_XS * terms_P.reshape(num_x, num_s), axis=0)


def clustered_nodes(lo: float, hi: float, num_nodes: int = NUM_NODES):
    """Gauss–Legendre in s with t = lo + (hi - lo) sin^2(pi s / 2): nodes bunch at both ends.

    Returns:
      (t_N, w_N): nodes and weights, with the Jacobian dt/ds folded into the weights.
    """
    x_N, w_N = np.polynomial.legendre.leggauss(num_nodes)
    s_N, w_N = (x_N + 1.0) / 2.0, w_N / 2.0
    t_N = lo + (hi - lo) * np.sin(0.5 * np.pi * s_N) ** 2
    return t_N, w_N * (hi - lo) * 0.5 * np.pi * np.sin(np.pi * s_N)


@functools.cache
def quadrature_bounds(kind: str, schedule_name: str) -> dict[str, np.ndarray]:
    """Negative ELBOs of every clean sequence by quadrature over t, each (S,), float64.

    Returns ``exact`` and ``perturbed`` (the two denoisers, integrated over [0, 1]) and
    ``truncated`` (the exact denoiser over [t_min, t_max]), from one compiled function.
    """
    with jax.enable_x64(True):
        process = make_process(kind, schedule_name)
        exact = make_denoiser(process, kind, perturbed=False)
        perturbed = make_denoiser(process, kind, perturbed=True)
        noisy_XL = jnp.asarray(noisy_states(kind), jnp.int32)
        full_t, full_w = clustered_nodes(0.0, 1.0)
        trunc_t, trunc_w = clustered_nodes(process.t_min, process.t_max)

        def integrands(t):  # (2, S): exact and perturbed
            return jnp.stack(
                [expected_integrand(process, d, noisy_XL, t) for d in (exact, perturbed)]
            )

        values_N2S = jax.jit(lambda t_N: jax.lax.map(integrands, t_N, batch_size=32))(
            np.concatenate([full_t, trunc_t])
        )
        full_2S = np.einsum("n,nks->ks", full_w, np.asarray(values_N2S[:NUM_NODES]))
        truncated_S = trunc_w @ np.asarray(values_N2S[NUM_NODES:, 0])
        return {"exact": full_2S[0], "perturbed": full_2S[1], "truncated": truncated_S}


@pytest.mark.parametrize(("kind", "schedule_name"), CASES)
def test_oracle_bound_equals_nll(kind, schedule_name):
    bound_S = quadrature_bounds(kind, schedule_name)["exact"]
    nll_S = -np.log(ref.target_probs())
    error = np.abs(bound_S - nll_S).max()
    print(f"\n{kind}/{schedule_name}: max |bound - nll| over 81 sequences = {error:.2e}")
    assert error < 1e-4


def expected_divergence(kind: str, alpha: float) -> float:
    """E_{x_t ~ p_t} of the per-time gap between the perturbed and exact denoisers.

    Masked: sum over masked positions of KL(exact posterior || model). Uniform: sum over
    positions l and tokens j != x_t^l of r_j phi(r'_j / r_j), with r the ratio of marginals
    sum_a p(a | x_t) q_t(j | a) / q_t(x_t^l | a) and phi(u) = u - 1 - log u.
    """
    states_XL = ref.sequences(ref.V + 1 if kind == "masked" else ref.V)
    q_BA = ref.forward_matrix(kind, alpha)
    p_X = np.prod(q_BA[states_XL[:, None, :], ref.sequences()[None]], axis=-1) @ ref.target_probs()
    exact_XLV = ref.posterior_marginals(kind, states_XL, ref.target_probs(), alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        logits_XLV = np.log(exact_XLV) + DELTA_LV
        model_XLV = np.exp(logits_XLV - logits_XLV.max(-1, keepdims=True))
        model_XLV /= model_XLV.sum(-1, keepdims=True)
        if kind == "masked":
            kl_XL = np.sum(exact_XLV * np.log(exact_XLV / model_XLV), axis=-1)
            gap_X = np.where(states_XL == ref.MASK_SYMBOL, kl_XL, 0.0).sum(-1)
            return float(p_X @ gap_X)
    # ratio[x, j, a] = q_t(j | a) / q_t(x | a)
    ratio_XJA = q_BA[None, :, :] / q_BA[:, None, :]
    exact_r = np.einsum("xla,xlja->xlj", exact_XLV, ratio_XJA[states_XL])
    model_r = np.einsum("xla,xlja->xlj", model_XLV, ratio_XJA[states_XL])
    u = model_r / exact_r
    terms_XLJ = exact_r * (u - 1.0 - np.log(u))
    not_x = ~np.eye(ref.V, dtype=bool)[states_XL]
    return float(p_X @ np.where(not_x, terms_XLJ, 0.0).sum((1, 2)))


@functools.cache
def divergence_integral(kind: str) -> float:
    """The expected gap integrated over time, written in alpha so no schedule enters.

    Masked weight -alpha'/(1 - alpha) dt = d alpha / (1 - alpha); uniform sigma / V dt =
    d alpha / (V alpha).
    """
    alpha_N, w_N = clustered_nodes(0.0, 1.0)
    weight_N = 1.0 / (1.0 - alpha_N) if kind == "masked" else 1.0 / (ref.V * alpha_N)
    values_N = np.array([expected_divergence(kind, a) for a in alpha_N])
    return float(np.sum(w_N * weight_N * values_N))


@pytest.mark.parametrize(("kind", "schedule_name"), CASES)
def test_perturbed_bound_pays_expected_divergence(kind, schedule_name):
    """E_p[bound'(x)] - E_p[bound(x)] equals the integrated expected divergence (> 0).

    The gap is not positive for every x (a wrong model may favour some sequences), only
    on average under p, where it is a divergence between posteriors.
    """
    bounds = quadrature_bounds(kind, schedule_name)
    gap_S = bounds["perturbed"] - bounds["exact"]
    mean_gap = float(ref.target_probs() @ gap_S)
    expected = divergence_integral(kind)
    print(
        f"\n{kind}/{schedule_name}: E_p[gap] = {mean_gap:.6f}, integrated divergence = "
        f"{expected:.6f}, gap > 0 for {np.mean(gap_S > 0):.0%} of x (min {gap_S.min():.3f})"
    )
    assert mean_gap > 0.01
    np.testing.assert_allclose(mean_gap, expected, rtol=1e-6)


def monte_carlo_bound(kind, schedule_name, num_replicates=32, batch=4096, seed=0):
    """Replicate means of the training loss summed over positions, x ~ p: (R,)."""
    with jax.enable_x64(True):
        process = make_process(kind, schedule_name)
        denoise = make_denoiser(process, kind, perturbed=False)
        tokens_SL = jnp.asarray(ref.sequences(), jnp.int32)
        probs_S = jnp.asarray(ref.target_probs())

        @jax.jit
        def replicate(key):
            k_x, k_u, k_noise = jax.random.split(key, 3)
            tokens_BL = tokens_SL[jax.random.choice(k_x, tokens_SL.shape[0], (batch,), p=probs_S)]
            loss_BL = process.training_loss(
                denoise,
                jax.random.split(k_noise, batch),
                tokens_BL,
                jnp.ones(tokens_BL.shape, bool),
                stratified_uniforms(k_u, batch),
            )
            return loss_BL.sum(-1).mean()

        keys = jax.random.split(jax.random.key(seed), num_replicates)
        return np.array([replicate(k) for k in keys])


@pytest.mark.parametrize(("kind", "schedule_name"), CASES)
def test_training_loss_is_unbiased_for_truncated_bound(kind, schedule_name):
    probs_S = ref.target_probs()
    full, truncated = (quadrature_bounds(kind, schedule_name)[k] for k in ("exact", "truncated"))
    target = float(probs_S @ truncated)
    means_R = monte_carlo_bound(kind, schedule_name)
    estimate, stderr = means_R.mean(), means_R.std(ddof=1) / np.sqrt(len(means_R))
    lost = float(probs_S @ (full - truncated))
    print(
        f"\n{kind}/{schedule_name}: MC {estimate:.4f} ± {stderr:.4f} (SE), quadrature over "
        f"[t_min, t_max] {target:.4f}, over [0, 1] {probs_S @ full:.4f}; truncation "
        f"lowers E_p[bound] by {lost:.4f} nats (max over x {np.max(full - truncated):.4f})"
    )
    assert abs(estimate - target) < 3.0 * stderr
    # The integrand is non-negative, so truncation can only lower the bound, and by little.
    assert np.all(full - truncated >= -1e-9)
    assert lost < 0.01 * float(probs_S @ full)
