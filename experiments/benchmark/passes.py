"""Seconds of one bare network pass of a given shape: what a sampler's step costs beyond it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dllm_jax.evaluation.speed import compile_timed, median_time
from dllm_jax.nn.attention import KVCache
from dllm_jax.nn.model import apply_model

from .setup import Setup

# ---- bare passes ----------------------------------------------------------------------

BACK_TO_BACK = 8  # passes dispatched back to back per timed call: one pass is a few ms


class PassTimes:
    """Median seconds of one jitted network pass, the same program a sampler step runs.

    Kinds: ``full`` (``apply_model`` over the whole canvas: samplers without a cache),
    ``chunk`` (``forward_chunk`` of ``queries`` positions against a KV cache of ``keys``:
    block caches), ``decode`` (an AR ``decode_step``). Each shape is compiled once, with the
    timed programs' compiler options, and timed as ``BACK_TO_BACK`` calls dispatched back
    to back (per call: their time / ``BACK_TO_BACK``).
    """

    def __init__(self, setup: Setup):
        self.setup, self._memo = setup, {}

    def seconds(self, kind: str, graphdef, params, config, batch: int, queries: int, keys: int) -> float:
        key = (kind, config, batch, queries, keys)
        if key not in self._memo:
            fn, args = _program(kind, graphdef, config, batch, queries, keys)
            compiled = compile_timed(jax.jit(fn), params, *args, options=self.setup.compiler_options)[0]

            def back_to_back():
                return [compiled(params, *args) for _ in range(BACK_TO_BACK)]

            s, _ = median_time(back_to_back, self.setup.warmup, max(self.setup.reps, 5))
            self._memo[key] = s / BACK_TO_BACK
        return self._memo[key]


def _program(kind: str, graphdef, config, batch: int, queries: int, keys: int):
    """(fn(params, *args), args) of one pass; inputs are masks/zeros (speed does not depend on them)."""
    t_B = jnp.ones((batch,), jnp.float32) if config.time_conditioning else None
    x_BQ = jnp.full((batch, queries), config.special.mask, jnp.int32)
    if kind == "full":
        return (lambda p, x, t: apply_model(graphdef, p, x, t)), (x_BQ, t_B)
    shape = (config.num_layers, batch, keys, config.kv_heads, config.head_dim)
    cache = KVCache(jnp.zeros(shape, config.dtype), jnp.zeros(shape, config.dtype))
    if kind == "chunk":
        valid = jnp.ones((batch, keys), bool)

        def chunk(p, x, start, cache, valid, t):
            return nnx.merge(graphdef, p, copy=True).forward_chunk(x, start, cache, valid, t)[0]

        return chunk, (x_BQ, jnp.int32(keys - queries), cache, valid, t_B)
    if kind == "decode":
        def decode(p, x, pos, cache):
            return nnx.merge(graphdef, p, copy=True).decode_step(x, pos, cache)[0]

        return decode, (x_BQ[:, 0], jnp.int32(keys - 1), cache)
    raise ValueError(f"unknown pass kind {kind!r}; expected full, chunk or decode")
