"""The validation bound against exact answers on the tiny distribution (V = 3, L = 4).

With the exact denoiser the continuous-time ELBO is tight, so the bound reported by
``evaluate_likelihood`` must equal the exact NLL of the evaluated data, within its own
Monte-Carlo CI; replicates with fresh noise check that the CI is honest (their spread
matches it and it covers the truth). The AR objective with exact conditionals gives the
exact NLL with CI 0. ``t_min = 0`` so the bound is the full integral over [0, 1]: with the
default t_min the tight target would be lowered by the truncated piece.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import oracle_reference as ref
import pytest
from flax import nnx

from dllm_jax.config import MeshConfig, special_ids
from dllm_jax.data.tokenizer import Tokenizer
from dllm_jax.diffusion import (
    ARObjective,
    LogLinear,
    MaskedProcess,
    UniformProcess,
    oracle_denoiser,
)
from dllm_jax.evaluation import (
    evaluate_likelihood,
    likelihood_from_sums,
    stratified_likelihood,
    token_utf8_lengths,
    utf8_bytes,
)
from dllm_jax.evaluation.eval_step import make_eval_step
from dllm_jax.sharding import make_mesh
from dllm_jax.training.loop import evaluate

IDS = special_ids(ref.V)
MESH = make_mesh(MeshConfig())


class Wrapped(nnx.Module):
    """A parameter-free module around a function, so ``make_eval_step`` can run it."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, tokens_BL, t_B=None):
        return self.fn(tokens_BL, t_B)


def make_process(kind: str):
    if kind == "masked":
        return MaskedProcess(ref.V, LogLinear(), t_min=0.0, mask_id=IDS.mask)
    return UniformProcess(ref.V, LogLinear(), t_min=0.0)


def ar_oracle(probs_S):
    """Exact AR conditionals: input [bos, x_1 .. x_{L-1}] -> log p(x_l | x_<l) at each l."""
    support_SL = jnp.asarray(ref.sequences(), jnp.int32)
    onehot_SLV = jnp.eye(ref.V)[support_SL]
    probs_S = jnp.asarray(probs_S, jnp.float32)

    def logits(inputs_BL, t_B):
        del t_B
        prefix_BL = inputs_BL[:, 1:]
        out = []
        for pos in range(ref.L):
            match_BS = jnp.all(support_SL[None, :, :pos] == prefix_BL[:, None, :pos], axis=-1)
            joint_BV = jnp.einsum("bs,sv->bv", match_BS * probs_S, onehot_SLV[:, pos])
            out.append(jnp.log(joint_BV / joint_BV.sum(-1, keepdims=True)))
        return jnp.stack(out, axis=1)

    return logits


def data_from_p(num_rows: int, seed: int = 0):
    """Sequences whose empirical distribution is p rounded to 1 / num_rows, shuffled.

    Returns (tokens (N, L) int32, exact mean NLL per token of these rows under p).
    """
    p_S = ref.target_probs()
    counts_S = np.floor(num_rows * p_S).astype(int)
    remainder_S = num_rows * p_S - counts_S
    counts_S[np.argsort(-remainder_S)[: num_rows - counts_S.sum()]] += 1
    tokens = np.repeat(ref.sequences(), counts_S, axis=0).astype(np.int32)
    nll = float(counts_S @ -np.log(p_S)) / num_rows / ref.L
    return tokens[np.random.default_rng(seed).permutation(num_rows)], nll


def batches_of(tokens_NL, num_batches: int, index_offset: int = 0):
    rows = len(tokens_NL) // num_batches
    return [
        {
            "tokens": tokens_NL[k * rows : (k + 1) * rows],
            "loss_mask": np.ones((rows, ref.L), bool),
            "index": np.arange(k * rows, (k + 1) * rows, dtype=np.int32) + index_offset,
        }
        for k in range(num_batches)
    ]


def oracle_model(objective):
    if isinstance(objective, ARObjective):
        fn = ar_oracle(ref.target_probs())
    else:
        fn = oracle_denoiser(objective, ref.sequences(), ref.target_probs())
    return nnx.split(Wrapped(fn))


ENTROPY_PER_TOKEN = float(-(ref.target_probs() @ np.log(ref.target_probs()))) / ref.L
MAX_CI = {"masked": 0.02, "uniform": 0.04}  # observed: 0.011 and 0.023 nats/token


@pytest.mark.parametrize("kind", ["masked", "uniform"])
def test_oracle_bound_equals_exact_nll_within_ci(kind):
    tokens, data_nll = data_from_p(4096)
    assert abs(data_nll - ENTROPY_PER_TOKEN) < 1e-3  # the rounded data is close to p
    process = make_process(kind)
    graphdef, params = oracle_model(process)
    batches = batches_of(tokens, 4)
    result = evaluate_likelihood(
        process, graphdef, params, batches, MESH, time_points=16, num_bytes=4096 * ref.L
    )
    print(
        f"\n{kind}: bound {result.nats_per_token:.4f} ± {result.ci95:.4f}, data NLL "
        f"{data_nll:.4f}, H(p)/L {ENTROPY_PER_TOKEN:.4f}"
    )
    assert 0.0 < result.ci95 < MAX_CI[kind]
    assert abs(result.nats_per_token - data_nll) <= result.ci95
    assert abs(result.nats_per_token - ENTROPY_PER_TOKEN) <= result.ci95
    assert not result.exact and result.time_points == 16
    assert result.time_samples == 16 * 4096 and result.tokens == 4096 * ref.L
    assert result.bits_per_token == pytest.approx(result.nats_per_token / math.log(2), rel=1e-12)
    assert result.perplexity == pytest.approx(math.exp(result.nats_per_token), rel=1e-12)
    # One byte per token here, so bits/byte is bits/token.
    assert result.bits_per_byte == pytest.approx(result.bits_per_token, rel=1e-12)
    if kind == "masked":  # the training loop's evaluate reports the same number
        eval_fn = make_eval_step(process, graphdef, MESH)
        assert evaluate(eval_fn, params, batches, 16)["val_loss"] == result.nats_per_token


def test_masked_ci_is_honest_across_replicates():
    """R replicates on the same rows, each with fresh noise keys and row order.

    Their spread must match the reported CI / 1.96 and their CIs must cover the exact NLL
    at about the nominal rate. With the plain grid (every stratum reusing each example's
    noise draw and time cell) the strata are near-copies and the CI came out 30x too
    narrow here; reusing only the noise, 2x (both fail). Keeping only the time cell fixed
    is ~1.2x too narrow, which 32 replicates cannot resolve.

    Masked only: the uniform estimator with t_min = 0 is heavy-tailed (its weight grows
    like 1 / alpha(t) as t -> 1; replicates 5 spreads from the mean were seen), so its CI
    from 8 strata is itself noisy (coverage ~0.8 at n = 8, ~0.9 at n = 16).
    """
    num_replicates, time_points = 32, 8
    tokens, data_nll = data_from_p(1024, seed=1)
    process = make_process("masked")
    graphdef, params = oracle_model(process)
    eval_fn = make_eval_step(process, graphdef, MESH)
    results = []
    for r in range(num_replicates):
        # Same rows, fresh order (so a fixed row-to-time assignment would show) and keys.
        rows = tokens[np.random.default_rng(100 + r).permutation(len(tokens))]
        batches = batches_of(rows, 2, index_offset=r * len(tokens))
        results.append(stratified_likelihood(eval_fn, params, batches, time_points, seed=r))
    est_R = np.array([r.nats_per_token for r in results])
    ci_R = np.array([r.ci95 for r in results])
    spread = est_R.std(ddof=1)
    ratio = spread / (ci_R.mean() / 1.96)
    coverage = np.mean(np.abs(est_R - data_nll) <= ci_R)
    z = (est_R.mean() - data_nll) / (spread / np.sqrt(num_replicates))
    print(
        f"\nmasked: replicate spread {spread:.4f}, mean CI/1.96 {ci_R.mean() / 1.96:.4f} "
        f"(ratio {ratio:.2f}), coverage {coverage:.2f}, z of the mean {z:.2f}"
    )
    assert 0.6 < ratio < 1.6
    assert coverage >= 0.75
    assert abs(z) < 3.0


def test_ar_objective_is_exact_nll_with_zero_ci():
    tokens, data_nll = data_from_p(1024)
    objective = ARObjective(ref.V, IDS.bos)
    graphdef, params = oracle_model(objective)
    result = evaluate_likelihood(
        objective, graphdef, params, batches_of(tokens, 2), MESH, time_points=16
    )
    assert result.exact and result.ci95 == 0.0
    assert result.time_points == 1 and result.time_samples == 1024
    assert result.nats_per_token == pytest.approx(data_nll, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(data_nll), rel=1e-5)


def test_bits_per_byte_and_ci_arithmetic():
    # Two strata over the same 50 tokens: means 2.0 and 2.2 nats/token.
    result = likelihood_from_sums([100.0, 110.0], [50, 50], rows=10, num_bytes=200)
    assert result.nats_per_token == pytest.approx(2.1)
    # std([2.0, 2.2], ddof=1) = 0.1 * sqrt(2); / sqrt(2) strata = 0.1; * 1.96.
    assert result.ci95 == pytest.approx(0.196)
    # 2.1 nats/token * 50 tokens = 105 nats = 151.48 bits over 200 bytes.
    assert result.bits_per_byte == pytest.approx(105.0 / math.log(2) / 200)
    assert result.bits_per_byte == pytest.approx(0.757415, rel=1e-5)
    assert result.time_samples == 20 and result.tokens == 50
    assert likelihood_from_sums([100.0], [50], rows=10).bits_per_byte is None
    assert math.isnan(likelihood_from_sums([100.0], [50], rows=10).ci95)  # one stratum: no spread
    assert likelihood_from_sums([100.0], [50], rows=10, exact=True).ci95 == 0.0
    with pytest.raises(ValueError, match="num_bytes"):
        likelihood_from_sums([100.0, 110.0], [50, 50], rows=10, num_bytes=0)
    with pytest.raises(ValueError, match="same positive number of tokens"):
        likelihood_from_sums([100.0, 110.0], [50, 49], rows=10)


def test_utf8_bytes_counts_the_text_bytes(tmp_path):
    texts = ["the cat sat on the mat\n", "naïve café déjà vu\tthe end", "hello world, hello there"]
    tok = Tokenizer.train(texts * 20, 300, tmp_path / "tok.model")
    lengths = token_utf8_lengths(tok)
    assert lengths[tok.eos_id] == 0
    text = "the cat  sat\n\ron 日本語 \u2581\u2581 x 😀 naïve"  # byte fallback, U+2581, spaces
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert int(lengths[ids].sum()) == len(text.encode("utf-8"))
    # In batches: eos and specials count 0 bytes, masked-out positions are skipped.
    row = np.array(ids + [tok.eos_id, tok.num_tokens, tok.num_tokens + 1], np.int32)
    mask = np.ones(len(row), bool)
    batch = {"tokens": row[None], "loss_mask": mask[None]}
    assert utf8_bytes(tok, [batch]) == len(text.encode("utf-8"))
    mask[:3] = False
    dropped = int(lengths[ids[:3]].sum())
    assert dropped > 0
    assert (
        utf8_bytes(tok, [{"tokens": row[None], "loss_mask": mask[None]}])
        == len(text.encode()) - dropped
    )
