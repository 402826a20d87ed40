"""Pure train and eval steps, and their sharded jit.

Randomness is a function of (seed, step, global example index) only: the corruption of
example i at step n uses ``fold_in(fold_in(key(seed), n), i)`` and the times are stratified
over the global batch with one offset per step — never the device or host count.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dllm_jax.config import TrainConfig
from dllm_jax.diffusion.base import Objective
from dllm_jax.sharding import batch_sharding
from dllm_jax.training.state import TrainState, state_shardings

LN2 = math.log(2.0)


def _apply_fn(graphdef, params):
    model = nnx.merge(graphdef, params, copy=True)  # params may be closed over by a jit

    def apply(tokens_BL, t_B, causal_B=None):
        # Only recipes that mix AR rows pass causal_B; other models (oracles) need not take it.
        if causal_B is None:
            return model(tokens_BL, t_B)
        return model(tokens_BL, t_B, causal_B=causal_B)

    return apply


def _example_keys(key, index_B):
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(index_B.astype(jnp.uint32))


def batch_loss(objective: Objective, graphdef, params, batch, key, u_offset, progress=0.0):
    """(sum of per-token losses, normaliser) for one batch: the loss is their ratio.

    ``batch``: dict with ``tokens`` (B, L) int32, ``loss_mask`` (B, L) bool and ``index``
    (B,) global example indices. Times are u_i = (i + u_offset) / B. The normaliser is the
    number of loss tokens, or for a training ``Recipe`` with flat weighting the number of
    corrupted tokens scored (``Objective.loss_sums``).
    """
    tokens_BL, mask_BL = batch["tokens"], batch["loss_mask"]
    keys_B = _example_keys(key, batch["index"])
    u_B = (jnp.arange(tokens_BL.shape[0]) + u_offset) / tokens_BL.shape[0]
    return objective.loss_sums(_apply_fn(graphdef, params), keys_B, tokens_BL, mask_BL, u_B, progress)


def make_train_step(objective: Objective, graphdef, tx: optax.GradientTransformation, config: TrainConfig):
    """A pure ``(state, batch) -> (state, metrics)`` function."""

    def train_step(state: TrainState, batch):
        step_key = jax.random.fold_in(jax.random.key(config.seed), state.step)
        noise_key, time_key = jax.random.split(step_key)
        u_offset = jax.random.uniform(time_key)

        def loss_fn(params):
            progress = state.step / max(config.steps - 1, 1)  # 0 at the first step, 1 at the last
            total, count = batch_loss(objective, graphdef, params, batch, noise_key, u_offset, progress)
            return total / jnp.maximum(count, 1), count

        (loss, count), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema
        if ema is not None:
            d = config.ema_decay
            ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
        metrics = {
            "loss": loss,
            "bits_per_token": loss / LN2,
            "grad_norm": optax.tree.norm(grads),
            "loss_tokens": count,
        }
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema=ema)
        return new_state, metrics

    return train_step


def jit_train_step(train_step, state: TrainState, mesh: Mesh):
    """Jit with explicit in/out shardings and donation of the old state; runs under the mesh."""
    shardings = state_shardings(state)
    batch_sh = {"tokens": batch_sharding(mesh), "loss_mask": batch_sharding(mesh), "index": batch_sharding(mesh, 1)}
    jitted = jax.jit(
        train_step,
        in_shardings=(shardings, batch_sh),
        out_shardings=(shardings, NamedSharding(mesh, PartitionSpec())),
        donate_argnums=0,
    )

    @functools.wraps(train_step)
    def run(state, batch):
        with jax.set_mesh(mesh):
            return jitted(state, batch)

    run.jitted = jitted
    return run


def make_eval_step(objective: Objective, graphdef, mesh: Mesh, seed: int = 0):
    """``(params, batch, u_offset) -> (sum loss, tokens)`` with a fixed noise key.

    Averaging over offsets (j + 0.5) / n for j < n gives a deterministic stratified time
    grid of n * B points (see ``evaluation``).
    """
    key = jax.random.key(seed)
    jitted = jax.jit(lambda params, batch, u_offset: batch_loss(objective, graphdef, params, batch, key, u_offset))

    def run(params, batch, u_offset):
        with jax.set_mesh(mesh):
            return jitted(params, batch, u_offset)

    return run
