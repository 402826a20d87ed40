"""Block diffusion with real tiny Transformers: the two-stream training forward against the
cached generation forward, and the two ends of the block size.

* Train/test agreement: for the same clean prefix and noisy block, the logits of the
  two-stream forward (training) equal those of ``canvas_chunk`` against a cache holding the
  finished blocks (generation), for plain and ``shift`` models.
* Block size L: ``BlockDiffusion`` is the process's own full-sequence loss of the same
  weights run bidirectionally (same keys, same times).
* Block size 1: each masked token's loss is the ELBO weight times the model's NLL of it
  given the clean past (the weight integrates to 1 over t: the AR objective).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dllm_jax.config import (
    DataConfig,
    ExperimentConfig,
    MeshConfig,
    ModelConfig,
    NoiseConfig,
    TrainConfig,
)
from dllm_jax.diffusion import BlockDiffusion, make_objective, token_nll, training_objective
from dllm_jax.evaluation.eval_step import batch_loss
from dllm_jax.nn import create_model
from dllm_jax.sampling.ancestral import StaggeredAncestral, ancestral
from dllm_jax.sharding import make_mesh

V, L, B, BLOCK = 11, 16, 3, 4
BASE = dict(num_tokens=V, d_model=32, num_heads=4, num_layers=2, max_len=L, attention="block_causal",
            block_size=BLOCK, attention_bias="alibi")


def block_model(**kw):
    return create_model(ModelConfig(**{**BASE, **kw}), make_mesh(MeshConfig()), seed=3)


def cached_forward(graphdef, size):
    """Jitted (write, read) of generation's exact cache for chunks of ``size``: ``write(params,
    chunk, start, cache) -> cache`` and ``read(params, canvas, start, cache) -> logits``."""
    write = jax.jit(lambda p, chunk, start, cache: nnx.merge(graphdef, p).write_chunk(chunk, start, cache))
    read = jax.jit(lambda p, canvas, start, cache: nnx.merge(graphdef, p).canvas_chunk(canvas, start, size, cache))
    return write, read


def batch(seed=0):
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, V, (B, L)), jnp.int32)
    return {"tokens": tokens, "loss_mask": jnp.ones((B, L), bool), "index": jnp.arange(B)}


@pytest.mark.parametrize(("shift", "context"), [(False, "block_causal"), (True, "block_causal"), (True, "causal")])
def test_two_stream_logits_equal_the_cached_generation_forward(shift, context):
    graphdef, params = block_model(shift=shift, context_attention=context)
    model = nnx.merge(graphdef, params)
    objective = make_objective(NoiseConfig(process="masked"), V, model.config)
    data = batch()
    keys_B = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(7), i))(data["index"])
    noisy_BL, _ = objective.corrupt_blocks(keys_B, data["tokens"], data["loss_mask"], jnp.array([0.2, 0.5, 0.8]))
    assert bool(jnp.any(noisy_BL != data["tokens"]))
    train_BLV = model(noisy_BL, None, clean_BL=data["tokens"])
    if context == "causal":  # the context mask is in effect: other logits than block-causal context
        other = nnx.merge(block_model(shift=shift)[0], params)(noisy_BL, None, clean_BL=data["tokens"])
        assert not np.allclose(train_BLV[:, BLOCK:], other[:, BLOCK:], atol=1e-4)
        np.testing.assert_allclose(train_BLV[:, :BLOCK], other[:, :BLOCK], atol=1e-5)  # block 0: no context
    write, read = cached_forward(graphdef, BLOCK)
    cache = model.init_cache(B, L)
    for b in range(L // BLOCK):
        start = b * BLOCK
        canvas = data["tokens"].at[:, start:start + BLOCK].set(noisy_BL[:, start:start + BLOCK])
        canvas = canvas.at[:, start + BLOCK:].set(0)  # later blocks are not attended to
        test_BCV = read(params, canvas, start, cache)
        np.testing.assert_allclose(train_BLV[:, start:start + BLOCK], test_BCV, atol=2e-5, rtol=1e-5)
        # the finished block enters the cache as generation writes it
        cache = write(params, data["tokens"][:, start:start + BLOCK], start, cache)


@pytest.mark.parametrize("process", ["masked", "uniform"])
def test_block_size_L_is_the_full_sequence_objective(process):
    graphdef, params = block_model(block_size=L)
    bidir_graphdef, _ = create_model(ModelConfig(**{**BASE, "attention": "bidirectional"}), make_mesh(MeshConfig()))
    noise = NoiseConfig(process=process)
    block = make_objective(noise, V, nnx.merge(graphdef, params).config)
    process = make_objective(noise, V)
    assert isinstance(block, BlockDiffusion) and block.process == process
    data, key = batch(1), jax.random.key(5)
    got = batch_loss(block, graphdef, params, data, key, 0.3)
    want = batch_loss(process, bidir_graphdef, params, data, key, 0.3)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_block_size_1_scores_each_token_given_its_clean_past():
    graphdef, params = block_model(block_size=1)
    model = nnx.merge(graphdef, params)
    objective = make_objective(NoiseConfig(process="masked"), V, model.config)
    data = batch(2)
    keys_B = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(9), i))(data["index"])
    u_B = (jnp.arange(B) + 0.37) / B
    loss_BL = objective.training_loss(
        lambda x, t, clean_BL: model(x, t, clean_BL=clean_BL), keys_B, data["tokens"], data["loss_mask"], u_B)
    noisy_BL, t_BL = objective.corrupt_blocks(keys_B, data["tokens"], data["loss_mask"], u_B)
    masked_BL = noisy_BL == objective.process.mask_id
    assert 0 < int(masked_BL.sum()) < B * L
    # The model's NLL of token l given the clean tokens < l and a mask at l: generation's view.
    write, read = cached_forward(graphdef, 1)
    nll_BL, cache = jnp.zeros((B, L)), model.init_cache(B, L)
    for pos in range(L):
        canvas = data["tokens"].at[:, pos].set(objective.process.mask_id)
        logits = read(params, canvas, pos, cache)
        nll_BL = nll_BL.at[:, pos].set(token_nll(logits, data["tokens"][:, pos:pos + 1], V)[:, 0])
        cache = write(params, data["tokens"][:, pos:pos + 1], pos, cache)
    weight_BL = objective.process.weight(t_BL.reshape(-1)).reshape(B, L) * (1 - objective.process.t_min)
    np.testing.assert_allclose(loss_BL, jnp.where(masked_BL, weight_BL * nll_BL, 0.0), rtol=2e-5, atol=1e-6)
    # and the weight of a masked token integrates to one over t: E[loss] = the AR NLL.
    t = np.linspace(0.0, 1.0, 200_001)[1:]
    schedule = objective.process.schedule
    integrand = (1 - np.asarray(schedule.alpha(jnp.asarray(t)))) * np.asarray(objective.process.weight(jnp.asarray(t)))
    assert abs(np.trapezoid(integrand, t) - 1.0) < 1e-4


def test_block_times_are_stratified_over_the_global_batch_of_blocks():
    objective = BlockDiffusion(make_objective(NoiseConfig(), V), BLOCK)
    keys_B = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(8))
    u_B = (jnp.arange(8) + 0.25) / 8
    _, u_R = objective.block_keys_and_uniforms(keys_B, u_B, L)
    strata = np.sort(np.floor(np.asarray(u_R) * 32).astype(int))
    np.testing.assert_array_equal(strata, np.arange(32))  # each of the B * n strata once
    first_blocks = np.asarray(u_R).reshape(8, 4)[:, 0]
    assert first_blocks.max() - first_blocks.min() > 0.5  # block 0 is not pinned to low t


def test_recipes_reach_block_models_and_bad_block_configs_are_refused():
    model = ModelConfig(**BASE)
    noise = NoiseConfig(t_low=0.3, t_high=0.8, weighting="flat")
    trained = training_objective(noise, model, make_objective(noise, V, model))
    assert isinstance(trained, BlockDiffusion)
    assert (trained.sampler.low, trained.sampler.high, trained.weighting) == (0.3, 0.8, "flat")
    small = dict(name="block", model=model, data=DataConfig(vocab_size=V))
    with pytest.raises(ValueError, match="multiple of ModelConfig.block_size=4"):
        ExperimentConfig(**small, train=TrainConfig(seq_len=14))
    with pytest.raises(ValueError, match="time-conditioned"):
        ExperimentConfig(**{**small, "model": dataclasses.replace(model, time_conditioning=True)},
                         train=TrainConfig(seq_len=16))
    with pytest.raises(ValueError, match="ar_fraction"):
        ExperimentConfig(**small, train=TrainConfig(seq_len=16), noise=NoiseConfig(ar_fraction=0.5))


def test_context_ar_loss_adds_the_causal_models_next_token_nll():
    """``context_ar_weight`` w: the training sums are the block NELBO's plus w times the AR
    NLL of the clean stream, which with a causal context is the same weights run as a causal
    (AR) model on the clean tokens; evaluation's objective carries no such term."""
    graphdef, params = block_model(shift=True, context_attention="causal")
    config = nnx.merge(graphdef, params).config
    noise = NoiseConfig(context_ar_weight=0.5)
    bound = make_objective(noise, V, config)
    trained = training_objective(noise, config, bound)
    assert bound.context_ar_weight == 0 and trained.context_ar_weight == 0.5
    data, key = batch(3), jax.random.key(4)
    got_total, got_count = batch_loss(trained, graphdef, params, data, key, 0.6)
    base_total, base_count = batch_loss(bound, graphdef, params, data, key, 0.6)
    causal = ModelConfig(**{**BASE, "attention": "causal"})  # its raw output at i: the AR prediction of i + 1
    ar_logits = nnx.merge(create_model(causal, make_mesh(MeshConfig()))[0], params)(data["tokens"])
    ar_nll = jnp.sum(token_nll(ar_logits[:, :-1], data["tokens"][:, 1:], V))
    assert float(ar_nll) > 1.0 and int(got_count) == int(base_count)
    np.testing.assert_allclose(got_total - base_total, 0.5 * ar_nll, rtol=2e-5)
    # the per-position form agrees with the sums
    keys_B = jax.vmap(lambda i: jax.random.fold_in(key, i))(data["index"])
    model = nnx.merge(graphdef, params)

    def apply(noisy_BL, t_BN, clean_BL, with_context=False):
        return model.two_stream(noisy_BL, clean_BL, None, with_context)

    u_B = (jnp.arange(B) + 0.6) / B
    total, _ = trained.loss_sums(apply, keys_B, data["tokens"], data["loss_mask"], u_B)
    np.testing.assert_allclose(trained.training_loss(apply, keys_B, data["tokens"], data["loss_mask"], u_B).sum(),
                               total, rtol=1e-5)


def test_context_distill_swaps_targets_for_the_clean_streams_predictions_where_unbiased():
    """``context_distill`` a: the training terms are the one-hot ones plus, at each masked
    position l past its block's first with no visible token after it in the block, a times
    the ELBO weight (times the time range) times (CE against softmax(clean output at l - 1) - NLL of x_l); checked
    against a per-position loop."""
    graphdef, params = block_model(shift=True, context_attention="causal")
    model = nnx.merge(graphdef, params)
    config = model.config
    plain = training_objective(NoiseConfig(context_ar_weight=1.0), config, make_objective(NoiseConfig(), V, config))
    distilled = dataclasses.replace(plain, context_distill=0.7)
    data = batch(5)
    keys_B = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(2), i))(data["index"])
    u_B = (jnp.arange(B) + 0.3) / B

    def apply(noisy_BL, t_BN, clean_BL, with_context=False):
        return model.two_stream(noisy_BL, clean_BL, None, with_context)

    tokens, mask = data["tokens"], data["loss_mask"]
    got = np.asarray(distilled.training_loss(apply, keys_B, tokens, mask, u_B))
    base = np.asarray(plain.training_loss(apply, keys_B, tokens, mask, u_B))
    noisy, t_BN = (np.asarray(x) for x in plain.corrupt_blocks(keys_B, tokens, mask, u_B))
    logits, clean = (np.asarray(x, np.float64) for x in apply(jnp.asarray(noisy), None, tokens, with_context=True))
    want, distilled_count = base.copy(), 0
    width = plain.sampler.high - plain.sampler.low  # the uniform times' range (t_min clips it)
    for b in range(B):
        for pos in range(1, L):
            blk, within = divmod(pos, BLOCK)
            later = noisy[b, pos + 1:(blk + 1) * BLOCK]
            if within == 0 or noisy[b, pos] != config.special.mask or np.any(later != config.special.mask):
                continue
            log_q = logits[b, pos] - np.log(np.sum(np.exp(logits[b, pos])))
            teacher = np.exp(clean[b, pos - 1] - np.max(clean[b, pos - 1]))
            teacher /= teacher.sum()
            weight = width * float(plain.process.weight(jnp.asarray(t_BN[b, blk:blk + 1]))[0])
            want[b, pos] += 0.7 * weight * (-np.sum(teacher * log_q) + log_q[tokens[b, pos]])
            distilled_count += 1
    assert distilled_count >= 4 and np.abs(got - base).max() > 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("noise_kw", "match"), [
    (dict(process="uniform"), "needs process='masked'"),
    (dict(context_distill=1.5), "context_distill must be in"),
])
def test_context_distill_is_refused_without_a_masked_causal_context(noise_kw, match):
    model = ModelConfig(**{**BASE, "shift": True, "context_attention": "causal"})
    with pytest.raises(ValueError, match=match):
        ExperimentConfig(name="ctx", model=model, data=DataConfig(vocab_size=V), train=TrainConfig(seq_len=16),
                         noise=NoiseConfig(**{"context_distill": 0.5, **noise_kw}))
    with pytest.raises(ValueError, match="needs process='masked'"):
        ExperimentConfig(name="ctx", model=ModelConfig(**{**BASE, "shift": True}), data=DataConfig(vocab_size=V),
                         train=TrainConfig(seq_len=16), noise=NoiseConfig(context_distill=0.5))


@pytest.mark.parametrize(("model_kw", "match"), [
    (dict(shift=False, context_attention="causal"), "needs ModelConfig.shift=True"),
    (dict(shift=True), "context_attention='causal'"),
    (dict(attention="bidirectional", block_size=1, shift=True), "for block-causal models"),
])
def test_context_ar_weight_is_refused_where_the_clean_stream_is_no_ar_model(model_kw, match):
    model = ModelConfig(**{**BASE, **model_kw})
    with pytest.raises(ValueError, match=match):
        ExperimentConfig(name="ctx", model=model, data=DataConfig(vocab_size=V), train=TrainConfig(seq_len=16),
                         noise=NoiseConfig(context_ar_weight=1.0))
    with pytest.raises(ValueError, match="context_ar_weight must be >= 0"):
        NoiseConfig(context_ar_weight=-0.1)


def test_block_stagger_defines_the_bound_and_the_sampler_and_is_refused_elsewhere():
    """``NoiseConfig.block_stagger`` reaches the evaluation objective (it defines the model,
    as the block size does), survives the training recipe, selects the staggered ancestral
    rule, and is refused where it has no meaning."""
    model = ModelConfig(**BASE)
    noise = NoiseConfig(block_stagger=0.5, t_low=0.3)
    objective = make_objective(noise, V, model)
    assert isinstance(objective, BlockDiffusion) and objective.stagger == 0.5
    assert training_objective(noise, model, objective).stagger == 0.5
    assert isinstance(ancestral(objective), StaggeredAncestral)
    assert not isinstance(ancestral(make_objective(NoiseConfig(), V, model)), StaggeredAncestral)
    tau_RC, rate_RC = objective.stagger_times(jnp.array([0.0, 0.3, 0.7, 1.0]))
    # windows of block 4 at stagger 0.5 (w = 0.4): [0.6, 1], [0.4, 0.8], [0.2, 0.6], [0, 0.4]
    np.testing.assert_allclose(tau_RC, [[0, 0, 0, 0], [0, 0, 0.25, 0.75], [0.25, 0.75, 1, 1], [1, 1, 1, 1]],
                               atol=1e-6)
    np.testing.assert_allclose(rate_RC[1], [0, 0, 2.5, 2.5])
    for kw, match in ((dict(block_stagger=1.5), "block_stagger must be in"),
                      (dict(block_stagger=0.5, process="uniform"), "needs process='masked'")):
        with pytest.raises(ValueError, match=match):
            NoiseConfig(**kw)
    with pytest.raises(ValueError, match="for block-causal models"):
        ExperimentConfig(name="stagger", model=ModelConfig(**{**BASE, "attention": "bidirectional", "block_size": 1}),
                         data=DataConfig(vocab_size=V), train=TrainConfig(seq_len=16),
                         noise=NoiseConfig(block_stagger=0.5))
    with pytest.raises(ValueError, match="stagger must be in"):
        BlockDiffusion(objective.process, BLOCK, stagger=-0.1)
    with pytest.raises(ValueError, match="needs a staggered BlockDiffusion"):
        StaggeredAncestral(objective.process)
