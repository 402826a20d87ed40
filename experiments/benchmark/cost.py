"""Timing, XLA cost of network passes, analytic FLOPs, and the device peaks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dllm_jax.config import ModelConfig
from dllm_jax.evaluation.speed import median_time
from dllm_jax.nn.attention import KVCache
from dllm_jax.nn.layers import rotary_tables
from dllm_jax.nn.model import abstract_model
from dllm_jax.nn.transformer import Block, rope_scaling

from .setup import COST_ONLY, Setup

# ---- timing and cost ------------------------------------------------------------------


def xla_cost(compiled) -> dict:
    """FLOPs and bytes accessed of a compiled program (a dict, or a list of dicts per device)."""
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    ca = ca or {}
    return {"flops": float(ca.get("flops", 0.0)), "bytes": float(ca.get("bytes accessed", 0.0))}


def cost_compile(fn, *args):
    try:
        return jax.jit(fn).lower(*args).compile(compiler_options=COST_ONLY)
    except Exception:  # a backend without the option: the default pipeline gives the same HLO cost
        return jax.jit(fn).lower(*args).compile()


def loop_counting() -> str:
    """'once' if XLA's cost analysis counts a loop body once, 'trip_count' if per iteration."""
    x = jax.ShapeDtypeStruct((64, 64), jnp.float32)

    def scan(n):
        return lambda a: jax.lax.scan(lambda c, _: (c @ a, None), a, None, length=n)[0]

    two, four = (xla_cost(cost_compile(scan(n), x))["flops"] for n in (2, 4))
    return "trip_count" if four > 1.5 * two else "once"


def _sds(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype)


class PassCosts:
    """XLA cost of one network pass of a given shape, with the layer scan corrected."""

    def __init__(self, loops: str):
        self.loops, self._memo = loops, {}

    def chunk(self, config: ModelConfig, batch: int, chunk: int, keys: int) -> dict:
        """A ``forward_chunk`` of ``chunk`` queries against ``keys`` cache positions."""
        key = ("chunk", config, batch, chunk, keys)
        if key not in self._memo:
            graphdef, state = abstract_model(config)
            t_B = _sds((batch,), jnp.float32) if config.time_conditioning else None

            def run(state, x, start, valid, t):
                m = nnx.merge(graphdef, state, copy=True)
                return m.forward_chunk(x, start, m.init_cache(batch, keys), valid, t)[0]

            args = (
                state,
                _sds((batch, chunk), jnp.int32),
                _sds((), jnp.int32),
                _sds((batch, keys), bool),
                t_B,
            )
            self._memo[key] = self._with_layers(
                config,
                xla_cost(cost_compile(run, *args)),
                batch,
                chunk,
                keys,
            )
        return self._memo[key]

    def decode(self, config: ModelConfig, batch: int, keys: int) -> dict:
        """One ``decode_step`` (one position per row) against a cache of ``keys`` positions."""
        key = ("decode", config, batch, keys)
        if key not in self._memo:
            graphdef, state = abstract_model(config)
            cache = jax.eval_shape(lambda: nnx.merge(graphdef, state).init_cache(batch, keys))

            def run(state, x, pos, cache):
                return nnx.merge(graphdef, state, copy=True).decode_step(x, pos, cache)[0]

            cost = xla_cost(
                cost_compile(run, state, _sds((batch,), jnp.int32), _sds((), jnp.int32), cache)
            )
            self._memo[key] = self._with_layers(
                config,
                cost,
                batch,
                1,
                keys,
            )
        return self._memo[key]

    def _with_layers(self, config, cost, batch, queries, keys):
        """Add (num_layers - 1) x one compiled layer (``queries`` positions against a cache of
        ``keys``: what every pass of the layer scan runs) when XLA counted the scan once."""
        if self.loops != "once" or config.num_layers == 1:
            return cost
        bgd, bstate = nnx.split(nnx.eval_shape(lambda: Block(config, rngs=nnx.Rngs(0))))
        dtype = jnp.dtype(config.dtype)
        kv = _sds((batch, keys, config.kv_heads, config.head_dim), dtype)
        cond = (
            _sds((batch, config.time_embed_dim), jnp.float32) if config.time_conditioning else None
        )

        def layer(bstate, x, start, k, v, mask, cond):
            sin, cos = rotary_tables(config.max_len, config.head_dim, config.rope_theta, rope_scaling(config))
            positions = jnp.broadcast_to(start + jnp.arange(queries), (batch, queries))
            block = nnx.merge(bgd, bstate, copy=True)
            return block(x, mask, positions, sin, cos, cond, KVCache(k, v), start)

        args = (
            bstate,
            _sds((batch, queries, config.d_model), dtype),
            _sds((), jnp.int32),
            kv,
            kv,
            _sds((batch, queries, keys), bool),
            cond,
        )
        one = xla_cost(cost_compile(layer, *args))
        return {k: cost[k] + (config.num_layers - 1) * one[k] for k in cost}


def matmul_params(config: ModelConfig) -> int:
    """Parameters used in matmuls per token: attention + SwiGLU per layer, and the head."""
    d = config.d_model
    return config.num_layers * (4 * d * d + 3 * d * config.hidden_dim) + d * config.num_tokens


def analytic_flops(config: ModelConfig, tokens: int, keys: int) -> float:
    """Forward FLOPs of ``tokens`` queries attending to ``keys`` positions (matmuls only)."""
    return tokens * (2.0 * matmul_params(config) + 4.0 * config.num_layers * config.d_model * keys)


# ---- peaks ----------------------------------------------------------------------------


def measure_peaks(setup: Setup) -> dict:
    """Matmul FLOP/s and copy bytes/s of this device, measured now."""
    n, dtype = setup.matmul_n, jnp.dtype(setup.matmul_dtype)
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    mm = jax.jit(jnp.matmul)
    mm_s, _ = median_time(lambda: mm(a, b), warmup=1, reps=max(setup.reps, 3))
    # Donated: the output reuses the input's buffer, so no fresh pages are faulted in.
    holder = [jnp.ones((setup.copy_mb * 2**20 // 4,), jnp.float32)]
    cp = jax.jit(lambda x: x + 1.0, donate_argnums=0)

    def copy():
        holder[0] = cp(holder[0])
        return holder[0]

    cp_s, _ = median_time(copy, warmup=1, reps=5)
    flops, nbytes = 2.0 * n**3, 2.0 * holder[0].nbytes
    return {
        "matmul": {
            "n": n,
            "dtype": setup.matmul_dtype,
            "seconds": mm_s,
            "flops_per_s": flops / mm_s,
        },
        "copy": {"megabytes": setup.copy_mb, "seconds": cp_s, "bytes_per_s": nbytes / cp_s},
        "machine_balance": (flops / mm_s) / (nbytes / cp_s),
    }


def best_peaks(samples: list[dict]) -> dict:
    """The best of several peak measurements: other work on a shared machine only lowers them."""
    mm = max((p["matmul"] for p in samples), key=lambda m: m["flops_per_s"])
    cp = max((p["copy"] for p in samples), key=lambda c: c["bytes_per_s"])
    balance = mm["flops_per_s"] / cp["bytes_per_s"]
    return {"matmul": mm, "copy": cp, "machine_balance": balance, "samples": samples}
