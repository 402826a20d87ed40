"""The context-use diagnostic against exact answers on the tiny distribution (V = 3, L = 4).

With the exact denoiser, the NLL per corrupted token at t is a ratio of two expectations
over x ~ p and x_t ~ q_t(. | x), both computed here by enumerating every (x, x_t) pair with
the independent numpy reference. The diagnostic's Monte-Carlo estimate must fall inside its
own confidence interval around the truth (and the interval must be honest: the truth within
~3 half-widths at every t, for both processes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import oracle_reference as ref
import pytest

from dllm_jax.config import ModelConfig, special_ids
from dllm_jax.diffusion import (
    ARObjective,
    LogLinear,
    MaskedProcess,
    UniformProcess,
    oracle_denoiser,
)
from dllm_jax.evaluation import evaluate_likelihood
from dllm_jax.evaluation.context_use import (
    context_use,
    histogram_entropy,
    make_context_fn,
    ratio_interval,
)
from dllm_jax.nn import create_model
from dllm_jax.sharding import make_mesh

MASK_ID = special_ids(ref.V).mask
TIMES = (0.05, 0.3, 0.7, 0.95)


def exact_nll_per_corrupted(kind: str, t: float) -> float:
    """sum_{x, x_t} p(x) q_t(x_t|x) sum_l [x_t^l != x^l] (-log p(x^l | x_t)) / E[#corrupted]."""
    alpha = ref.log_linear_alpha(t)
    num_symbols = ref.V + 1 if kind == "masked" else ref.V
    states_XL = ref.sequences(num_symbols)
    seqs_SL, probs_S = ref.sequences(), ref.target_probs()
    q_BA = ref.forward_matrix(kind, alpha)
    q_XS = np.prod(q_BA[states_XL[:, None, :], seqs_SL[None, :, :]], axis=-1)
    marg_XLV = ref.posterior_marginals(kind, states_XL, probs_S, alpha)
    corrupted_XSL = states_XL[:, None, :] != seqs_SL[None, :, :]
    post_XSL = marg_XLV[:, np.arange(ref.L)[None, :], seqs_SL]  # p(x^l | x_t) for each x
    weight_XS = q_XS * probs_S[None, :]
    with np.errstate(divide="ignore"):
        nll_XSL = np.where(corrupted_XSL, -np.log(np.where(corrupted_XSL, post_XSL, 1.0)), 0.0)
    nll_XSL = np.where(weight_XS[..., None] > 0, nll_XSL, 0.0)
    return float((weight_XS[..., None] * nll_XSL).sum() / (weight_XS[..., None] * corrupted_XSL).sum())


def make_process(kind: str):
    if kind == "masked":
        return MaskedProcess(ref.V, LogLinear(), mask_id=MASK_ID)
    return UniformProcess(ref.V, LogLinear())


def data_batches(num_batches: int, rows: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    seqs, probs = ref.sequences(), ref.target_probs()
    out = []
    for b in range(num_batches):
        tokens = seqs[rng.choice(len(seqs), size=rows, p=probs)].astype(np.int32)
        out.append({"tokens": jnp.asarray(tokens), "loss_mask": jnp.ones(tokens.shape, bool),
                    "index": jnp.arange(b * rows, (b + 1) * rows, dtype=jnp.int32)})
    return out


@pytest.mark.parametrize("kind", ["masked", "uniform"])
def test_diagnostic_matches_exact_enumeration(kind):
    process = make_process(kind)
    oracle = oracle_denoiser(process, ref.sequences(), ref.target_probs())
    fn = make_context_fn(process, lambda params, x, t: oracle(x, t), seed=3)
    batches = data_batches(4, 8192)
    use = context_use(process, None, None, batches, None, times=TIMES, context_fn=fn)
    exact = [exact_nll_per_corrupted(kind, t) for t in TIMES]
    print(f"\n{kind}: t {TIMES}\n  diagnostic {np.round(use.nll, 4)}\n  exact      {np.round(exact, 4)}"
          f"\n  ci95       {np.round(use.ci95, 4)}")
    for t, value, half, truth in zip(TIMES, use.nll, use.ci95, exact, strict=True):
        assert abs(value - truth) < 3.0 * half, (t, value, truth, half)
        assert half < 0.06  # 32k rows: a tight interval even at t = 0.05
    # The curve is not flat: a constant (e.g. unigram) answer would be caught. Masked: more
    # visible tokens, lower NLL. Uniform: at small t a corrupted token hides among clean ones.
    assert (exact[0] < exact[-1] - 0.3) if kind == "masked" else (exact[0] > exact[-1] + 0.3)


def test_uniform_diagnostic_ignores_positions_resampled_to_their_own_token():
    """A position redrawn to the same token is not corrupted: a perfectly wrong denoiser at
    clean positions must not move the diagnostic."""
    process = make_process("uniform")
    oracle = oracle_denoiser(process, ref.sequences(), ref.target_probs())
    batches = data_batches(1, 4096)

    def spoiled(params, x_BL, t_B):  # certain of a wrong token wherever x_t equals x_0
        clean_BL = x_BL == params
        wrong = jax.nn.one_hot((x_BL + 1) % ref.V, ref.V) * 50.0
        return jnp.where(clean_BL[..., None], wrong, oracle(x_BL, t_B))

    fn_true = make_context_fn(process, lambda p, x, t: oracle(x, t), seed=1)
    fn_spoiled = make_context_fn(process, spoiled, seed=1)
    tokens = batches[0]["tokens"]
    a = fn_true(None, batches[0], 0.5)
    b = fn_spoiled(tokens, batches[0], 0.5)
    np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))


def test_ar_reference_line_is_the_exact_nll_at_every_t():
    model = ModelConfig(num_tokens=ref.V, max_len=ref.L, d_model=16, num_heads=2, attention="causal")
    mesh = make_mesh()
    graphdef, params = create_model(model, mesh, seed=0)
    objective = ARObjective(ref.V, special_ids(ref.V).bos)
    batches = data_batches(2, 64)
    use = context_use(objective, graphdef, params, batches, mesh, times=(0.1, 0.9))
    exact = evaluate_likelihood(objective, graphdef, params, batches, mesh).nats_per_token
    assert use.exact and use.nll[0] == use.nll[1]
    np.testing.assert_allclose(use.nll[0], exact, rtol=1e-5)
    assert use.corrupted[0] == 2 * 64 * ref.L


def test_ratio_interval_and_entropy_by_hand():
    ratio, half = ratio_interval(np.array([2.0, 4.0, 6.0]), np.array([1.0, 2.0, 3.0]))
    assert ratio == 2.0 and half == 0.0
    batches = [{"tokens": np.array([[0, 0, 1, 1]]), "loss_mask": np.array([[True, True, True, False]])}]
    p = np.array([2 / 3, 1 / 3])
    np.testing.assert_allclose(histogram_entropy(batches, 2), -(p * np.log(p)).sum())


def test_bad_times_are_refused():
    process = make_process("masked")
    with pytest.raises(ValueError, match=r"times must be a non-empty list in \(0, 1\], got \(0.0,\)"):
        context_use(process, None, None, data_batches(1, 4), None, times=(0.0,), context_fn=lambda *a: None)
    with pytest.raises(ValueError, match="no batches"):
        context_use(process, None, None, [], None, times=(0.5,), context_fn=lambda *a: None)
