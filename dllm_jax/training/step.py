"""Pure train and eval steps, and their sharded jit.

Randomness is a function of (seed, step, global example index) only: the corruption of
example i at step n uses ``fold_in(fold_in(key(seed), n), i)`` and the times are stratified
over the global batch with one offset per step — never the device or host count.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dllm_jax.config import TrainConfig
from dllm_jax.diffusion.base import Objective
from dllm_jax.evaluation.eval_step import batch_loss, make_eval_step  # noqa: F401 (re-exported)
from dllm_jax.evaluation.likelihood import LN2
from dllm_jax.sharding import batch_sharding
from dllm_jax.training.state import TrainState, train_state_shardings


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
    shardings = train_state_shardings(state)
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
