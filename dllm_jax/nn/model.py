"""Creating a backbone with its parameters born sharded, and applying it functionally."""

from __future__ import annotations

import functools

import jax
from flax import nnx
from jax.sharding import Mesh

from dllm_jax.config import ModelConfig
from dllm_jax.nn.transformer import Transformer
from dllm_jax.sharding import logical_shardings


def abstract_model(config: ModelConfig):
    """(graphdef, abstract state) without allocating parameters."""
    return nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))


def param_shardings(config: ModelConfig, mesh: Mesh):
    """NamedShardings of the parameter state, from each parameter's logical axes."""
    return logical_shardings(abstract_model(config)[1], mesh)


def create_model(config: ModelConfig, mesh: Mesh, seed: int = 0):
    """Initialise parameters directly into their shardings.

    Returns:
      (graphdef, params): the static graph definition and the ``nnx.State`` of parameters.
    """
    graphdef, _ = abstract_model(config)
    shardings = param_shardings(config, mesh)

    @functools.partial(jax.jit, out_shardings=shardings)
    def init(key):
        return nnx.split(Transformer(config, rngs=nnx.Rngs(params=key)))[1]

    return graphdef, init(jax.random.key(seed))


def apply_model(graphdef, params, tokens_BL, t_B=None):
    """Logits (B, L, num_tokens) of the model defined by ``graphdef`` with ``params``."""
    # copy=True: params may be closed over by a jitted sampler (another trace level).
    return nnx.merge(graphdef, params, copy=True)(tokens_BL, t_B)
