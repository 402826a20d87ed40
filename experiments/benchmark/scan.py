"""Scan overhead: the scan sampler vs separate jitted passes, and compile time vs K."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax.evaluation.speed import compile_timed, median_time
from dllm_jax.nn.model import apply_model
from dllm_jax.sampling.ancestral import ancestral
from dllm_jax.sampling.draws import position_keys
from dllm_jax.sampling.driver import example_keys, sample, time_grid

from .sampling import Models
from .setup import Setup

# ---- scan overhead and compile time ---------------------------------------------------


def scan_overhead(setup: Setup, models: Models) -> dict:
    """The K-step scan sampler vs K separate jitted passes, and compile time vs K.

    Separate passes: K calls of the jitted forward on one input, dispatched back to back
    (the network's cost alone), and a Python loop of K jitted steps (forward + rule).
    """
    length, k, rule = setup.sizes[0], setup.scan_k, ancestral(models.process)
    keys_B, opts = example_keys(0, np.arange(1)), setup.compiler_options
    compiled = {}
    for num_steps in (8, 1024, k):  # the compile-time ratio, then the timed K (compiled once)
        if num_steps not in compiled:
            fn = jax.jit(lambda p, keys, n=num_steps: sample(
                lambda x, t: apply_model(models.graphdef, p, x, t), rule, keys, length, n))
            compiled[num_steps] = compile_timed(fn, models.params, keys_B, options=opts)
    scan_s, _ = median_time(lambda: compiled[k][0](models.params, keys_B), setup.warmup, setup.reps)
    forward_s, loop_s = _separate_passes(setup, models, rule, keys_B)
    compile_8, compile_1024 = compiled[8][1], compiled[1024][1]
    return dict(
        k=k, length=length, batch=1, scan_s=scan_s, scan_compile_s=compiled[k][1],
        separate_forward_s=forward_s, python_loop_steps_s=loop_s, ratio_vs_forward=scan_s / forward_s,
        ratio_vs_python_loop=scan_s / loop_s, compile_k8_s=compile_8, compile_k1024_s=compile_1024,
        compile_ratio=compile_1024 / compile_8,
    )


def _separate_passes(setup: Setup, models: Models, rule, keys_B) -> tuple[float, float]:
    """(seconds of K jitted forwards back to back, seconds of a Python loop of K jitted steps)."""
    gd, params, length, k, opts = models.graphdef, models.params, setup.sizes[0], setup.scan_k, setup.compiler_options
    x, t = jnp.full((1, length), models.process.mask_id, jnp.int32), jnp.ones((1,))
    forward = compile_timed(jax.jit(lambda p, x, t: apply_model(gd, p, x, t)), params, x, t, options=opts)[0]
    forward_s, _ = median_time(lambda: [forward(params, x, t) for _ in range(k)], setup.warmup, setup.reps)

    def one_step(p, tokens_BL, keys, i):
        grid, denoise = time_grid(k), lambda x, t: apply_model(gd, p, x, t)
        return rule.step(denoise, tokens_BL, grid[i], grid[i + 1], position_keys(keys, i, jnp.arange(length)), ())[0]

    step = compile_timed(jax.jit(one_step), params, x, keys_B, jnp.int32(0), options=opts)[0]
    steps_i = [jnp.int32(i) for i in range(k)]

    def python_loop():
        tokens = x
        for i in steps_i:
            tokens = step(params, tokens, keys_B, i)
        return tokens

    loop_s, _ = median_time(python_loop, setup.warmup, setup.reps)
    return forward_s, loop_s
