"""The objective's loss on one batch, and the jitted eval step built from it.

Shared by training (``training.step`` differentiates ``batch_loss``) and evaluation (the
stratified bound runs ``make_eval_step``). Randomness is a function of (seed, global example
index) only: example i is corrupted with ``fold_in(key, i)``, never the device or host count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from dllm_jax.diffusion.base import Objective
from dllm_jax.rng import example_keys


def _apply_fn(graphdef, params):
    model = nnx.merge(graphdef, params, copy=True)  # params may be closed over by a jit

    def apply(tokens_BL, t_B, causal_B=None, clean_BL=None, with_context=False):
        # Only recipes that mix AR rows pass causal_B, only block objectives clean_BL (the
        # two-stream forward, with_context: its clean stream too); other models (oracles)
        # need not take them.
        if with_context:
            return model.two_stream(tokens_BL, clean_BL, None, with_context=True)
        if clean_BL is not None:
            return model(tokens_BL, None, clean_BL=clean_BL)
        if causal_B is None:
            return model(tokens_BL, t_B)
        return model(tokens_BL, t_B, causal_B=causal_B)

    return apply


def batch_loss(objective: Objective, graphdef, params, batch, key, u_offset, progress=0.0):
    """(sum of per-token losses, normaliser) for one batch: the loss is their ratio.

    ``batch``: dict with ``tokens`` (B, L) int32, ``loss_mask`` (B, L) bool and ``index``
    (B,) global example indices. Times are u_i = (i + u_offset) / B. The normaliser is the
    number of loss tokens, or for a training ``Recipe`` with flat weighting the number of
    corrupted tokens scored (``Objective.loss_sums``).
    """
    tokens_BL, mask_BL = batch["tokens"], batch["loss_mask"]
    keys_B = example_keys(key, batch["index"])
    u_B = (jnp.arange(tokens_BL.shape[0]) + u_offset) / tokens_BL.shape[0]
    return objective.loss_sums(_apply_fn(graphdef, params), keys_B, tokens_BL, mask_BL, u_B, progress)


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
