"""The train step: padding never enters the loss; randomness depends on example index only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax.config import MeshConfig, ModelConfig, NoiseConfig, TrainConfig
from dllm_jax.diffusion import make_objective
from dllm_jax.nn import apply_model
from dllm_jax.sharding import make_mesh
from dllm_jax.training import create_train_state, make_train_step
from dllm_jax.training.step import batch_loss

V, L, B = 10, 12, 4


@pytest.fixture(scope="module")
def setup():
    mesh = make_mesh(MeshConfig())
    model = ModelConfig(num_tokens=V, max_len=L, d_model=32, num_layers=1, num_heads=2, mlp_dim=32)
    train = TrainConfig(batch_size=B, seq_len=L, steps=10, warmup_steps=0)
    graphdef, state, tx = create_train_state(model, train, mesh)
    return graphdef, state, tx, train, model


def padded_batch(pad_fill):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, V, (B, L)).astype(np.int32)
    mask = np.ones((B, L), bool)
    mask[1, 7:] = False  # padding at the end of example 1
    mask[3, 2:] = False
    tokens[~mask] = pad_fill
    return {"tokens": jnp.asarray(tokens), "loss_mask": jnp.asarray(mask), "index": jnp.arange(B)}


@pytest.mark.parametrize("process", ["masked", "uniform", "ar"])
def test_padding_never_enters_the_loss(setup, process):
    graphdef, state, *_ , model = setup
    objective = make_objective(NoiseConfig(process=process), V)
    pad = model.special.pad
    key = jax.random.key(0)
    per_token = jax.jit(lambda b: objective.training_loss(
        lambda x, t: apply_model(graphdef, state.params, x, t),
        jax.vmap(lambda i: jax.random.fold_in(key, i))(b["index"]), b["tokens"], b["loss_mask"],
        (jnp.arange(B) + 0.5) / B))
    batch = padded_batch(pad)
    losses = np.asarray(per_token(batch))
    assert np.all(losses[~np.asarray(batch["loss_mask"])] == 0)
    total, count = batch_loss(objective, graphdef, state.params, batch, key, 0.5)
    assert int(count) == int(np.asarray(batch["loss_mask"]).sum())
    assert float(total) == pytest.approx(float(losses.sum()), rel=1e-5)
    assert np.all(losses[np.asarray(batch["loss_mask"])] >= 0) and np.isfinite(float(total))


def test_train_step_is_deterministic_and_index_keyed(setup):
    graphdef, state, tx, train, _ = setup
    objective = make_objective(NoiseConfig(process="masked"), V)
    step = jax.jit(make_train_step(objective, graphdef, tx, train))
    batch = padded_batch(V)
    _, m1 = step(state, batch)
    _, m2 = step(state, batch)
    assert float(m1["loss"]) == float(m2["loss"])
    other = dict(batch, index=batch["index"] + 100)  # other examples -> other corruption
    _, m3 = step(state, other)
    assert float(m3["loss"]) != float(m1["loss"])
