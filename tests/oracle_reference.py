"""A tiny target distribution and a slow, exact numpy reference of the ancestral samplers.

Everything here is float64 numpy written from first principles, independently of the
library, so that tests can compare the library's ELBOs and samplers with exact answers.

The target p lives on all V**L = 81 sequences of V = 3 tokens and length L = 4, with strong
dependence between positions (far from the product of its marginals).

Reference sampler (time grid t_k = 1 - k / K, k = 0..K): given x_t, the posterior over
sequences is p(s | x_t) ∝ p(s) prod_l q_t(x_t^l | s_l); every position then moves
independently from its posterior marginal, so one step's transition matrix is a product
over positions. States are {0..V-1, M}^L for the masked process (M = mask, symbol V) and
{0..V-1}^L for the uniform one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

V, L = 3, 4
NUM_SEQUENCES = V**L
MASK_SYMBOL = V  # the mask's index in the reference's own state alphabet {0..V-1, M}

Alpha = Callable[[float], float]


def log_linear_alpha(t: float) -> float:
    """alpha(t) = 1 - t, written here independently of ``dllm_jax.diffusion.schedules``."""
    return 1.0 - t


def sequences(num_symbols: int = V) -> np.ndarray:
    """All sequences over ``num_symbols`` symbols in lexicographic order: (num_symbols**L, L)."""
    return np.array(list(itertools.product(range(num_symbols), repeat=L)), np.int64)


def target_probs() -> np.ndarray:
    """The fixed target p over the 81 sequences (lexicographic order): (81,), float64."""
    rng = np.random.default_rng(0)
    logits_S = 2.0 * rng.normal(size=NUM_SEQUENCES)
    p_S = np.exp(logits_S - logits_S.max())
    return p_S / p_S.sum()


def marginals(probs_S: np.ndarray) -> np.ndarray:
    """Per-position marginals of a distribution over ``sequences()``: (L, V)."""
    onehot_SLV = np.eye(V)[sequences()]
    return np.einsum("s,slv->lv", probs_S, onehot_SLV)


def product_of_marginals(probs_S: np.ndarray) -> np.ndarray:
    """The independent-positions distribution with the same marginals: (81,)."""
    marg_LV = marginals(probs_S)
    return np.prod(marg_LV[np.arange(L), sequences()], axis=-1)


def total_variation(p_S: np.ndarray, q_S: np.ndarray) -> float:
    return 0.5 * float(np.abs(np.asarray(p_S) - np.asarray(q_S)).sum())


def forward_matrix(kind: str, alpha: float) -> np.ndarray:
    """q_t(b | a) as a matrix (noisy symbol b, clean token a) at clean probability ``alpha``."""
    if kind == "masked":
        return np.concatenate([alpha * np.eye(V), np.full((1, V), 1.0 - alpha)])
    if kind == "uniform":
        return alpha * np.eye(V) + (1.0 - alpha) / V
    raise ValueError(f"unknown process kind {kind!r}; expected 'masked' or 'uniform'")


def posterior_marginals(kind: str, states_XL, probs_S, alpha: float) -> np.ndarray:
    """Per-position marginals of p(s | x_t) for every state x_t: (X, L, V).

    States that no sequence can produce at this time (a clean token at alpha = 0) get zeros;
    they carry no probability mass.
    """
    q_BA = forward_matrix(kind, alpha)
    seqs_SL = sequences()
    # lik[x, s] = prod_l q_t(x^l | s_l)
    lik_XS = np.prod(q_BA[states_XL[:, None, :], seqs_SL[None, :, :]], axis=-1)
    joint_XS = lik_XS * probs_S[None]
    total_X = joint_XS.sum(-1, keepdims=True)
    post_XS = np.divide(joint_XS, total_X, out=np.zeros_like(joint_XS), where=total_X > 0)
    return np.einsum("xs,slv->xlv", post_XS, np.eye(V)[seqs_SL])


def masked_step_kernel(states_XL, marg_XLV, a_t, a_s) -> np.ndarray:
    """Per-position next-symbol probabilities (X, L, V + 1) of one masked ancestral step.

    ``a_t``, ``a_s``: scalars, or one per position (L,) (staggered clocks); a position at
    alpha_t = 1 unmasks for sure."""
    a_t, a_s = np.asarray(a_t, np.float64), np.asarray(a_s, np.float64)
    p_unmask = np.where(a_t < 1.0, (a_s - a_t) / np.where(a_t < 1.0, 1.0 - a_t, 1.0), 1.0)[..., None]
    is_mask_XL1 = (states_XL == MASK_SYMBOL)[..., None]
    from_mask = np.concatenate(
        [p_unmask * marg_XLV, np.full(marg_XLV.shape[:2] + (1,), 1.0 - p_unmask)], axis=-1
    )
    stay = np.eye(V + 1)[states_XL]
    return np.where(is_mask_XL1, from_mask, stay)


def uniform_step_kernel(states_XL, marg_XLV, a_t: float, a_s: float) -> np.ndarray:
    """Per-position next-token probabilities (X, L, V) of one uniform ancestral step.

    x_s^l ~ sum_a p(a | x_t) q(x_s | x_t, x_0 = a), with
    q(x_s | x_t, x_0) = q(x_t | x_s) q_s(x_s | x_0) / q_t(x_t | x_0).
    """
    q_t = forward_matrix("uniform", a_t)  # [x_t, a]
    q_s = forward_matrix("uniform", a_s)  # [x_s, a]
    q_ts = forward_matrix("uniform", a_t / a_s)  # [x_t, x_s]
    # bridge[x_t, x_s, a] = q(x_s | x_t, x_0 = a)
    bridge = q_ts[:, :, None] * q_s[None, :, :] / q_t[:, None, :]
    return np.einsum("xla,xlja->xlj", marg_XLV, bridge[states_XL])


def transition_matrix(states_XL, kernel_XLN) -> np.ndarray:
    """T[x, y] = prod_l kernel[x, l, y^l]: positions move independently given x."""
    return np.prod(kernel_XLN[:, np.arange(L), states_XL], axis=-1)


def ancestral_reference(
    kind: str, num_steps: int, probs_S, alpha: Alpha = log_linear_alpha
) -> np.ndarray:
    """Exact output distribution of the K-step ancestral sampler with the exact denoiser.

    Args:
      kind: ``"masked"`` (start all-mask) or ``"uniform"`` (start uniform over sequences).
      num_steps: K; the grid is t_k = 1 - k / K.
      probs_S: the target distribution over ``sequences()``, (81,).
      alpha: the schedule's clean probability alpha(t).

    Returns:
      The distribution of the final sequence over ``sequences()``: (81,), float64.
    """
    num_symbols = V + 1 if kind == "masked" else V
    states_XL = sequences(num_symbols)
    dist_X = np.zeros(len(states_XL))
    if kind == "masked":
        dist_X[-1] = 1.0  # (M, M, M, M) is last in lexicographic order
    else:
        dist_X[:] = 1.0 / len(states_XL)
    step_kernel = masked_step_kernel if kind == "masked" else uniform_step_kernel
    for k in range(num_steps):
        a_t, a_s = alpha(1.0 - k / num_steps), alpha(1.0 - (k + 1) / num_steps)
        marg_XLV = posterior_marginals(kind, states_XL, probs_S, a_t)
        kernel = step_kernel(states_XL, marg_XLV, a_t, a_s)
        dist_X = dist_X @ transition_matrix(states_XL, kernel)
    clean_X = np.all(states_XL < V, axis=-1)
    assert abs(dist_X[clean_X].sum() - 1.0) < 1e-12, "mass left on masked states at t = 0"
    return dist_X[clean_X]
