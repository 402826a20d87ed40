"""Seconds of one bare network pass of a given shape: what a sampler's step costs beyond it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dllm_jax.evaluation.speed import compile_timed, median_time
from dllm_jax.nn.model import apply_model

from .setup import Setup

# ---- bare passes ----------------------------------------------------------------------

PASSES_PER_RUN = 8  # passes scanned in one timed program: one pass is a few ms


class PassTimes:
    """Median seconds of one network pass, the same pass a sampler step runs.

    Kinds: ``full`` (``apply_model`` over the whole canvas: samplers without a cache),
    ``chunk`` (``forward_chunk`` of ``queries`` positions against a KV cache of ``keys``:
    block caches), ``decode`` (an AR ``decode_step``). Each shape is compiled once, with the
    timed programs' compiler options, as ``PASSES_PER_RUN`` passes in one ``lax.scan`` whose
    input token depends on the last pass's output (so none is hoisted or skipped, and no
    per-call dispatch is counted: what a pass costs inside a sampler's scan).
    """

    def __init__(self, setup: Setup):
        self.setup, self._memo = setup, {}

    def seconds(self, kind: str, graphdef, params, config, batch: int, queries: int, keys: int) -> float:
        key = (kind, config, batch, queries, keys)
        if key not in self._memo:
            fn, args = _program(kind, graphdef, params, config, batch, queries, keys)
            looped = jax.jit(lambda p, x, *rest: scanned_passes(lambda x: fn(p, x, *rest), x, PASSES_PER_RUN))
            compiled = compile_timed(looped, params, *args, options=self.setup.compiler_options)[0]
            s, _ = median_time(lambda: compiled(params, *args), self.setup.warmup, max(self.setup.reps, 5))
            self._memo[key] = s / PASSES_PER_RUN
        return self._memo[key]


def scanned_passes(logits_fn, x, num: int):
    """``num`` calls of ``logits_fn(x)`` in one ``lax.scan``, each input's first token the last
    output's argmax there, so no pass can be hoisted or skipped. x: (B, L) tokens, or (B,)
    for a decode step."""
    def body(x, _):
        logits = logits_fn(x)
        first = jnp.argmax(logits if x.ndim == 1 else logits[:, 0], axis=-1).astype(x.dtype)
        return (first if x.ndim == 1 else x.at[:, 0].set(first)), None

    return jax.lax.scan(body, x, None, length=num)[0]


def _program(kind: str, graphdef, params, config, batch: int, queries: int, keys: int):
    """(fn(params, *args), args) of one pass; inputs are masks/zeros (speed does not depend on them)."""
    t_B = jnp.ones((batch,), jnp.float32) if config.time_conditioning else None
    x_BQ = jnp.full((batch, queries), config.special.mask, jnp.int32)
    if kind == "full":
        return (lambda p, x, t: apply_model(graphdef, p, x, t)), (x_BQ, t_B)
    cache = nnx.merge(graphdef, params).init_cache(batch, keys)
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
