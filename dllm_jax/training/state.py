"""The train state: a plain pytree, sharded like the parameters."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dllm_jax.config import ModelConfig, TrainConfig
from dllm_jax.nn.model import abstract_model, create_model
from dllm_jax.training.optimizer import make_optimizer


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    ema: Any = None  # EMA of params, or None when TrainConfig.ema_decay == 0


def create_train_state(model: ModelConfig, train: TrainConfig, mesh: Mesh):
    """Parameters born sharded, optimizer state initialised in place.

    Returns:
      (graphdef, state, tx): the model's static graph, the TrainState, and the optimizer.
    """
    graphdef, params = create_model(model, mesh, seed=train.seed)
    tx = make_optimizer(train, abstract_model(model)[1])
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
    replicated = NamedSharding(mesh, PartitionSpec())
    # Moments are sharded like their parameters; counters and other scalars replicated.
    opt_shardings = optax.tree_map_params(
        tx,
        lambda _, sharding: sharding,
        jax.eval_shape(tx.init, params),
        param_shardings,
        transform_non_params=lambda _: replicated,
    )
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
    ema = None
    if train.ema_decay > 0:
        ema = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=param_shardings)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), replicated)
    return graphdef, TrainState(step=step, params=params, opt_state=opt_state, ema=ema), tx


def train_state_shardings(state: TrainState):
    """The sharding each leaf of a train state *has* (the train step's in/out shardings)."""
    return jax.tree.map(lambda x: x.sharding, state)
