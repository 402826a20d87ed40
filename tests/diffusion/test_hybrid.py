"""The hybrid (mask + uniform, GIDD) process against exact answers on the tiny distribution.

- Its continuous-time ELBO with the exact denoiser equals -log p(x) for all 81 sequences
  (Gauss–Legendre over t, every corrupted state enumerated, float64).
- p_u = 0 is the masked process and p_u = 1 (constant share) the uniform one, term for term.
- Precision: on a target with sequences of probability ~1e-12 the float32 bound matches
  the float64 one (the uniform bound used to drop the range where 1 - alpha rounds to 0).
- The hybrid ancestral sampler's draws fit its exact K-step law (a numpy reference written
  here from the marginals alone), whose TV to p falls with K.
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
    Cosine,
    HybridProcess,
    LogLinear,
    MaskedProcess,
    UniformProcess,
    oracle_denoiser,
    sequence_index,
)
from dllm_jax.sampling import ancestral, example_keys, sample

MASK_ID = special_ids(ref.V).mask
SCHEDULES = {"loglinear": LogLinear(), "cosine": Cosine()}


def hybrid(p_u=0.2, share="constant", schedule="loglinear"):
    return HybridProcess(ref.V, SCHEDULES[schedule], mask_id=MASK_ID, p_uniform=p_u, share=share)


def states(num_symbols: int) -> np.ndarray:
    s = ref.sequences(num_symbols)
    return np.where(s == ref.V, MASK_ID, s)


def nodes(small_t: bool):
    """Quadrature over [0, 1]: nodes clustered at both ends; with ``small_t``, [1e-18, 1e-3]
    is integrated apart in log t (where rare sequences put their mass)."""
    x, w = np.polynomial.legendre.leggauss(256)
    s, w = (x + 1) / 2, w / 2
    lo = 1e-3 if small_t else 0.0
    t = lo + (1 - lo) * np.sin(0.5 * np.pi * s) ** 2
    w = w * (1 - lo) * 0.5 * np.pi * np.sin(np.pi * s)
    if not small_t:
        return t, w
    x, wa = np.polynomial.legendre.leggauss(128)
    a, b = np.log(1e-18), np.log(1e-3)
    ta = np.exp(a + (b - a) * (x + 1) / 2)
    return np.concatenate([ta, t]), np.concatenate([wa / 2 * (b - a) * ta, w])


def bound(process, num_symbols, probs_S, dtype=jnp.float64, small_t=False) -> np.ndarray:
    """Negative ELBO of every sequence by quadrature, expectation over x_t enumerated: (81,)."""
    with jax.enable_x64(True):
        denoise = oracle_denoiser(process, ref.sequences(), probs_S, dtype=dtype)
        X = jnp.asarray(states(num_symbols), jnp.int32)
        S = jnp.asarray(ref.sequences(), jnp.int32)
        nx, ns = X.shape[0], S.shape[0]

        def integrand(t):
            t_X = jnp.full((nx,), t, dtype)
            q_XS = jnp.prod(process.likelihood(X, t_X)[:, jnp.arange(ref.L)[None], S], -1)
            terms = process.elbo_terms(jnp.repeat(denoise(X, t_X), ns, 0), jnp.tile(S, (nx, 1)),
                                       jnp.repeat(X, ns, 0), jnp.full((nx * ns,), t, dtype)).sum(-1)
            return jnp.sum(q_XS.astype(jnp.float64) * terms.reshape(nx, ns).astype(jnp.float64), 0)

        t_N, w_N = nodes(small_t)
        values = jax.jit(lambda t: jax.lax.map(integrand, t, batch_size=16))(jnp.asarray(t_N, dtype))
        return w_N @ np.asarray(values, np.float64)


@pytest.mark.parametrize(("p_u", "share", "schedule"), [
    (0.2, "constant", "loglinear"), (0.1, "decaying", "loglinear"), (0.2, "decaying", "cosine"),
])
def test_oracle_bound_equals_nll(p_u, share, schedule):
    error = np.abs(bound(hybrid(p_u, share, schedule), ref.V + 1, ref.target_probs())
                   + np.log(ref.target_probs())).max()
    print(f"\nhybrid p_u={p_u} {share} {schedule}: max |bound - nll| = {error:.1e}")
    assert error < 1e-6


@pytest.mark.parametrize("share", ["constant", "decaying"])
def test_ends_are_the_masked_and_uniform_processes(share):
    """Term for term, at every (x_t, x_0, t), with a random (not exact) denoiser."""
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        B = 512
        t_B = jnp.asarray(rng.uniform(1e-4, 1 - 1e-3, B))
        logits = jnp.asarray(rng.normal(size=(B, ref.L, ref.V)))
        x0 = jnp.asarray(rng.integers(0, ref.V, (B, ref.L)), jnp.int32)
        masked = MaskedProcess(ref.V, LogLinear(), mask_id=MASK_ID)
        xt_m = jnp.where(jnp.asarray(rng.uniform(size=(B, ref.L)) < 0.5), MASK_ID, x0)
        np.testing.assert_allclose(hybrid(0.0, share).elbo_terms(logits, x0, xt_m, t_B),
                                   masked.elbo_terms(logits, x0, xt_m, t_B), rtol=1e-10, atol=1e-12)
        if share == "constant":
            uniform = UniformProcess(ref.V, LogLinear())
            xt_u = jnp.asarray(rng.integers(0, ref.V, (B, ref.L)), jnp.int32)
            np.testing.assert_allclose(hybrid(1.0).elbo_terms(logits, x0, xt_u, t_B),
                                       uniform.elbo_terms(logits, x0, xt_u, t_B), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(hybrid(1.0).likelihood(xt_u, t_B), uniform.likelihood(xt_u, t_B), rtol=1e-12)
        np.testing.assert_allclose(hybrid(0.0, share).likelihood(xt_m, t_B), masked.likelihood(xt_m, t_B),
                                   rtol=1e-12)


def rare_target() -> np.ndarray:
    """A target whose rarest sequences have p ~ 2e-12 .. 1e-9."""
    logits = 6.0 * np.random.default_rng(0).normal(size=ref.NUM_SEQUENCES)
    p = np.exp(logits - logits.max())
    return p / p.sum()


@pytest.mark.parametrize("kind", ["uniform", "hybrid"])
def test_float32_bound_keeps_the_small_t_range(kind):
    probs = rare_target()
    process, symbols = (UniformProcess(ref.V, LogLinear()), ref.V) if kind == "uniform" else (hybrid(0.2), ref.V + 1)
    b64 = bound(process, symbols, probs, jnp.float64, small_t=True)
    b32 = bound(process, symbols, probs, jnp.float32, small_t=True)
    rare = np.argsort(probs)[:5]
    print(f"\n{kind}: rarest p {probs[rare]}, float32 - float64 {b32[rare] - b64[rare]}")
    assert probs[rare].max() < 1e-8
    np.testing.assert_allclose(b64, -np.log(probs), atol=1e-6)
    assert np.abs(b32[rare] - b64[rare]).max() < 1e-3


# --- the ancestral sampler against its exact K-step law ---------------------------------------


def forward_matrix(process, t: float) -> np.ndarray:
    """q_t(z | a) from the process's definition: rows z = tokens then mask, columns a."""
    a = float(process.schedule.alpha(t))
    beta = 1.0 - a
    u = float(process.uniform_share(t)[0])
    return np.concatenate([a * np.eye(ref.V) + beta * u / ref.V, np.full((1, ref.V), beta * (1 - u))])


def transition(process, t: float, s: float) -> np.ndarray:
    """q_{t|s}(z | y) = lam [z = y] + (beta_t pi_t(z) - lam beta_s pi_s(z)), (V+1, V+1)."""
    lam = float(process.schedule.alpha(t)) / float(process.schedule.alpha(s))
    noise = lambda r: forward_matrix(process, r)[:, 0] - float(process.schedule.alpha(r)) * np.eye(ref.V + 1)[:, 0]
    return lam * np.eye(ref.V + 1) + (noise(t) - lam * noise(s))[:, None]


def reference_law(process, num_steps: int, probs_S) -> np.ndarray:
    symbols = ref.sequences(ref.V + 1)  # symbol V = mask
    seqs = ref.sequences()
    x1 = np.prod(np.where(symbols == ref.V, 1.0 - float(process.uniform_share(1.0)[0]),
                          float(process.uniform_share(1.0)[0]) / ref.V), -1)
    dist = x1
    for k in range(num_steps):
        t, s = 1.0 - k / num_steps, 1.0 - (k + 1) / num_steps
        q_t, q_s, q_ts = forward_matrix(process, t), forward_matrix(process, s), transition(process, t, s)
        lik = np.prod(q_t[symbols[:, None, :], seqs[None]], -1) * probs_S[None]
        post = lik / np.where(lik.sum(-1, keepdims=True) > 0, lik.sum(-1, keepdims=True), 1.0)
        marg = np.einsum("xs,slv->xlv", post, np.eye(ref.V)[seqs])
        with np.errstate(divide="ignore", invalid="ignore"):
            bridge = np.nan_to_num(q_ts[:, :, None] * q_s[None] / q_t[:, None, :])  # [x_t, x_s, a]
        kernel = np.einsum("xla,xlja->xlj", marg, bridge[symbols])
        dist = dist @ np.prod(kernel[:, np.arange(ref.L), symbols], -1)
    clean = np.all(symbols < ref.V, -1)
    assert abs(dist[clean].sum() - 1.0) < 1e-9
    return dist[clean]


@functools.cache
def counts(share: str, num_steps: int, n: int = 100_000) -> np.ndarray:
    process = hybrid(0.3, share)
    denoise = oracle_denoiser(process, ref.sequences(), ref.target_probs())
    draw = jax.jit(lambda k: sample(denoise, ancestral(process), k, length=ref.L, num_steps=num_steps)[0])
    tokens = np.asarray(draw(example_keys(seed=0, index_B=jnp.arange(n))))
    assert tokens.min() >= 0 and tokens.max() < ref.V, "a mask left in a sample"
    return np.bincount(sequence_index(tokens, ref.V), minlength=ref.NUM_SEQUENCES)


def pvalue(counts_S, probs_S) -> float:
    expected = counts_S.sum() * probs_S
    keep = expected >= 5
    obs, exp = counts_S[keep], expected[keep]
    if not keep.all():
        obs, exp = np.append(obs, counts_S[~keep].sum()), np.append(exp, expected[~keep].sum())
    return float(scipy.stats.chisquare(obs, exp).pvalue)


@pytest.mark.parametrize("share", ["constant", "decaying"])
def test_ancestral_sampler_matches_its_law_and_error_falls_with_steps(share):
    process, p = hybrid(0.3, share), ref.target_probs()
    tv = {k: ref.total_variation(reference_law(process, k, p), p) for k in (1, 4, 16, 64)}
    print(f"\nhybrid {share}: TV to p by K {tv}")
    assert tv[1] > tv[4] > tv[16] > tv[64] and tv[64] < 0.02
    law4 = reference_law(process, 4, p)
    p_ok = pvalue(counts(share, 4), law4)
    p_wrong = pvalue(counts(share, 4), reference_law(process, 2, p))
    print(f"chi-square p-value at K=4: {p_ok:.3f}; against the K=2 law: {p_wrong:.1e}")
    assert p_ok > 1e-3 and p_wrong < 1e-6


def test_bad_inputs():
    with pytest.raises(ValueError, match="p_uniform must be in"):
        hybrid(1.5)
    with pytest.raises(ValueError, match="p_uniform must be in"):
        hybrid(-0.1)
    with pytest.raises(ValueError, match="share must be one of"):
        hybrid(0.1, "rising")
    with pytest.raises(ValueError, match="mask_id"):
        HybridProcess(ref.V, LogLinear(), mask_id=1, p_uniform=0.1)
