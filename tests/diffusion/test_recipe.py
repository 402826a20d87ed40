"""Training recipes do what they claim, and never touch what is evaluated.

* time samplers: clipped ranges never leave [low, high]; the logit-normal is the truncated
  logit-normal (Kolmogorov–Smirnov against scipy); stratified uniforms stay stratified;
* flat weighting's loss is exactly the mean cross-entropy over the masked tokens;
* AR rows are exactly the AR objective of the same parameters under a causal mask, and a
  shift model's AR rows are causal (checked through gradients);
* the objective the loop evaluates is the same whatever the training recipe.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax import nnx

from dllm_jax.config import MeshConfig, ModelConfig, NoiseConfig
from dllm_jax.diffusion import (
    ARObjective,
    MaskedProcess,
    Recipe,
    TimeSampler,
    make_objective,
    stratified_uniforms,
    token_nll,
    training_objective,
)
from dllm_jax.nn import apply_model, create_model
from dllm_jax.sharding import make_mesh

V, L, B = 10, 12, 64


@pytest.mark.parametrize(
    "sampler",
    [TimeSampler("uniform", 0.1, 0.9), TimeSampler("uniform", 0.3, 0.8),
     TimeSampler("logit_normal", 0.0, 1.0), TimeSampler("logit_normal", 0.2, 0.6, 0.5, 2.0)],
)
def test_time_samplers_stay_in_range_and_follow_their_law(sampler):
    u = stratified_uniforms(jax.random.key(0), 20_000)
    t = np.asarray(sampler(u), np.float64)
    assert t.min() >= sampler.low and t.max() <= sampler.high
    assert np.all(np.diff(t) > 0)  # monotone in u: stratified times, in the same order
    if sampler.distribution == "uniform":
        law = scipy.stats.uniform(sampler.low, sampler.high - sampler.low)
    else:  # truncated logit-normal: logit(t) ~ N(mean, std) restricted to [logit lo, logit hi]
        lo, hi = (scipy.special.logit(x) for x in (sampler.low, sampler.high))
        a, b = (lo - sampler.logit_mean) / sampler.logit_std, (hi - sampler.logit_mean) / sampler.logit_std
        normal = scipy.stats.truncnorm(a, b, sampler.logit_mean, sampler.logit_std)
        law = type("L", (), {"cdf": staticmethod(lambda x: normal.cdf(scipy.special.logit(x)))})
    ks = scipy.stats.kstest(t, law.cdf)
    assert ks.statistic < 2e-3  # stratified: far closer to the law than iid draws would be
    # The density integrates to one over the range.
    grid = np.linspace(sampler.low, sampler.high, 20_001)[1:-1]
    mass = np.trapezoid(np.asarray(sampler.density(jnp.asarray(grid))), grid)
    assert mass == pytest.approx(1.0, abs=2e-3)


def test_training_range_is_intersected_with_the_process_range():
    noise = NoiseConfig(process="uniform", t_min=0.01, t_low=0.0, t_high=1.0, weighting="flat")
    model = ModelConfig(num_tokens=V)
    recipe = training_objective(noise, model, make_objective(noise, V))
    assert (recipe.times.low, recipe.times.high) == (0.01, 0.99)


@pytest.fixture(scope="module")
def model_setup():
    mesh = make_mesh(MeshConfig())
    model = ModelConfig(num_tokens=V, max_len=L, d_model=32, num_layers=2, num_heads=2, mlp_dim=32)
    graphdef, params = create_model(model, mesh, seed=1)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, V, (B, L)), jnp.int32)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(5), i))(jnp.arange(B))
    return model, graphdef, params, tokens, keys


def _apply(graphdef, params):
    model = nnx.merge(graphdef, params, copy=True)
    return lambda x, t, causal_B=None: model(x, t, causal_B=causal_B)


def test_flat_weighting_is_the_mean_cross_entropy_over_masked_tokens(model_setup):
    model, graphdef, params, tokens, keys = model_setup
    noise = NoiseConfig(weighting="flat", t_low=0.2, t_high=0.9)
    recipe = training_objective(noise, model, make_objective(noise, V))
    u = (jnp.arange(B) + 0.37) / B
    mask = jnp.ones((B, L), bool).at[3, 5:].set(False)  # some padding
    total, count = recipe.loss_sums(_apply(graphdef, params), keys, tokens, mask, u)
    # By hand: the same corruption, the cross-entropy at masked non-padding positions.
    process = recipe.process
    t = 0.2 + 0.7 * u
    noisy = jnp.where(mask, process.corrupt(keys, tokens, t), tokens)
    nll = -jax.nn.log_softmax(apply_model(graphdef, params, noisy, t), -1)
    nll = np.take_along_axis(np.asarray(nll), np.asarray(tokens)[..., None], -1)[..., 0]
    masked = np.asarray((noisy == process.mask_id) & mask)
    assert int(count) == masked.sum() > 0
    np.testing.assert_allclose(float(total / count), nll[masked].mean(), rtol=1e-5)


def test_elbo_weighting_on_uniform_times_is_the_process_loss(model_setup):
    """A Recipe with the plain settings equals the bare process (the evaluated bound)."""
    model, graphdef, params, tokens, keys = model_setup
    process = make_objective(NoiseConfig(), V)
    recipe = Recipe(process, TimeSampler("uniform", process.t_min, process.t_max))
    u = (jnp.arange(B) + 0.5) / B
    mask = jnp.ones((B, L), bool)
    a = recipe.loss_sums(_apply(graphdef, params), keys, tokens, mask, u)
    b = process.loss_sums(_apply(graphdef, params), keys, tokens, mask, u)
    np.testing.assert_allclose([float(x) for x in a], [float(x) for x in b], rtol=1e-6)


def test_ar_rows_are_the_ar_objective_under_a_causal_mask(model_setup):
    model, graphdef, params, tokens, keys = model_setup
    noise = NoiseConfig(ar_fraction=0.5)
    recipe = training_objective(noise, model, make_objective(noise, V))
    u = (jnp.arange(B) + 0.5) / B
    mask = jnp.ones((B, L), bool)
    total, count = recipe.loss_sums(_apply(graphdef, params), keys, tokens, mask, u)
    pick = np.asarray(jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0x41520)))(keys)) < 0.5
    assert 0.3 < pick.mean() < 0.7
    # The same parameters in a causal model, through the AR objective, on the AR rows only.
    causal_graphdef, _ = create_model(dataclasses.replace(model, attention="causal"), make_mesh(), seed=1)
    ar = ARObjective(V, model.special.bos)
    ar_loss = ar.training_loss(lambda x, t: apply_model(causal_graphdef, params, x, t), keys, tokens, mask, u)
    # The diffusion rows alone, through the bare recipe on those rows.
    diff = Recipe(recipe.process, recipe.times).loss_sums(
        _apply(graphdef, params), keys[~pick], tokens[~pick], mask[~pick], u[~pick])
    expected = float(np.asarray(ar_loss)[pick].sum()) + float(diff[0])
    assert int(count) == B * L
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)


def test_shift_model_ar_rows_are_causal_through_gradients(model_setup):
    model, *_ = model_setup
    shifted = dataclasses.replace(model, shift=True)
    graphdef, params = create_model(shifted, make_mesh(), seed=2)
    x = jax.random.normal(jax.random.key(2), (1, L, model.d_model))
    i = 6

    @jax.jit  # merge inside jit: nnx.scan refuses modules from an outer trace level
    def logits_i(p, h, causal):
        return nnx.merge(graphdef, p).forward_hidden(h, causal_B=causal)[0, i].sum()

    def seen(p, h, causal):
        return jnp.abs(jax.grad(logits_i, argnums=1)(p, h, causal)[0]).sum(-1)

    moved = np.asarray(seen(params, x, jnp.array([True]))) > 0
    # logits of token i come from position i - 1, which sees tokens 0 .. i - 1 only.
    assert moved[:i].all() and not moved[i:].any()
    assert (np.asarray(seen(params, x, jnp.array([False]))) > 0).all()  # bidirectional rows


def test_shift_realigns_logits_and_refuses_partial_chunks(model_setup):
    model, *_ = model_setup
    plain = dataclasses.replace(model)
    shifted = dataclasses.replace(model, shift=True)
    g0, params = create_model(plain, make_mesh(), seed=3)
    g1, _ = create_model(shifted, make_mesh(), seed=3)
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, V, (2, L)), jnp.int32)
    raw, out = apply_model(g0, params, tokens), apply_model(g1, params, tokens)
    np.testing.assert_allclose(np.asarray(out[:, 1:]), np.asarray(raw[:, :-1]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out[:, 0]), np.asarray(raw[:, 0]), rtol=1e-6)
    whole = jax.jit(lambda p, x: nnx.merge(g1, p).forward_chunk(x, 0, nnx.merge(g1, p).init_cache(2, L))[0])(
        params, tokens)
    np.testing.assert_allclose(np.asarray(whole), np.asarray(out), rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="whole canvases"):
        jax.jit(lambda p, x: nnx.merge(g1, p).forward_chunk(x, 4, nnx.merge(g1, p).init_cache(2, L)))(
            params, tokens[:, :4])


def test_the_evaluated_objective_ignores_the_training_recipe():
    plain = make_objective(NoiseConfig(), V)
    for noise in [NoiseConfig(weighting="flat"), NoiseConfig(t_low=0.3, t_high=0.8),
                  NoiseConfig(time_distribution="logit_normal"), NoiseConfig(ar_fraction=0.25)]:
        assert make_objective(noise, V) == plain
        assert isinstance(training_objective(noise, ModelConfig(num_tokens=V), plain), Recipe)
    assert training_objective(NoiseConfig(), ModelConfig(num_tokens=V), plain) is plain
    assert isinstance(plain, MaskedProcess)


def test_token_nll_reads_token_zero_for_special_ids():
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25]]]))
    np.testing.assert_allclose(np.asarray(token_nll(logits, jnp.array([[1]]), 3)), [[np.log(4)]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(token_nll(logits, jnp.array([[7]]), 3)), [[np.log(2)]], rtol=1e-6)


def test_ar_curriculum_goes_from_all_ar_rows_to_none(model_setup):
    model, graphdef, params, tokens, keys = model_setup
    noise = NoiseConfig(ar_fraction=1.0, ar_fraction_end=0.0)
    recipe = training_objective(noise, model, make_objective(noise, V))
    u = (jnp.arange(B) + 0.5) / B
    mask = jnp.ones((B, L), bool)
    apply = _apply(graphdef, params)
    causal_graphdef, _ = create_model(dataclasses.replace(model, attention="causal"), make_mesh(), seed=1)
    ar = ARObjective(V, model.special.bos)
    all_ar = ar.loss_sums(lambda x, t: apply_model(causal_graphdef, params, x, t), keys, tokens, mask, u)
    start = recipe.loss_sums(apply, keys, tokens, mask, u, progress=0.0)
    np.testing.assert_allclose(float(start[0]), float(all_ar[0]), rtol=1e-5)
    end = recipe.loss_sums(apply, keys, tokens, mask, u, progress=1.0)
    plain = recipe.process.loss_sums(apply, keys, tokens, mask, u)
    np.testing.assert_allclose([float(x) for x in end], [float(x) for x in plain], rtol=1e-5)
    middle = recipe.loss_sums(apply, keys, tokens, mask, u, progress=0.5)
    assert float(all_ar[0]) != float(middle[0]) != float(plain[0])


def test_recipe_training_loss_is_the_per_position_form_of_loss_sums():
    """Summed over positions, the per-position loss is loss_sums's numerator (ELBO weighting)."""
    from dllm_jax.diffusion import make_objective
    from dllm_jax.diffusion.recipe import Recipe, TimeSampler

    process = make_objective(NoiseConfig(process="masked"), 7)
    recipe = Recipe(process, TimeSampler("logit_normal", process.t_min, process.t_max, 0.0, 1.0))
    tokens_BL = jax.random.randint(jax.random.key(0), (4, 6), 0, 7)
    mask_BL = jnp.ones((4, 6), bool).at[0, :2].set(False)
    keys_B = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(1), i))(jnp.arange(4))
    u_B = (jnp.arange(4) + 0.5) / 4
    apply = lambda x, t: jax.nn.one_hot(x % 7, 7) * 2.0
    loss_BL = recipe.training_loss(apply, keys_B, tokens_BL, mask_BL, u_B)
    total, count = recipe.loss_sums(apply, keys_B, tokens_BL, mask_BL, u_B)
    assert loss_BL.shape == (4, 6) and bool(jnp.all(loss_BL[0, :2] == 0))
    np.testing.assert_allclose(float(jnp.sum(loss_BL)), float(total), rtol=1e-6)
    assert int(count) == int(mask_BL.sum())
