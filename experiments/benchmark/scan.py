"""Scan overhead: the scan sampler vs its bare network passes, and compile time vs K."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax.evaluation.speed import compile_timed, median_time
from dllm_jax.nn.model import apply_model
from dllm_jax.sampling.ancestral import ancestral
from dllm_jax.sampling.draws import position_keys
from dllm_jax.sampling.driver import example_keys, sample, time_grid
from dllm_jax.sampling.rules import make_rule

from .passes import scanned_passes
from .sampling import Models
from .setup import SCAN_ROUNDS, Setup

# ---- scan overhead and compile time ---------------------------------------------------


def scan_overhead(setup: Setup, models: Models) -> list[dict]:
    """One row per step rule (ancestral, threshold 0.9) at batch 1: the K-step scan sampler
    vs (a) K separate jitted forwards dispatched back to back (the target's reference),
    (b) K forwards in one scanned program (no dispatch: the strict reference), (c) a Python
    loop of K jitted steps (forward + rule; isolates the loop). The ancestral row also has
    the compile time at K = 8 and K = 1024.
    """
    rules = {"ancestral": ancestral(models.process),
             "threshold0.9": make_rule("threshold", models.process, threshold=0.9)}
    rows = [_rule_row(setup, models, name, rule) for name, rule in rules.items()]
    rows[0].update(_compile_times(setup, models, rules["ancestral"]))
    return rows


def _rule_row(setup: Setup, models: Models, name: str, rule) -> dict:
    gd, params, length, k, opts = models.graphdef, models.params, setup.sizes[0], setup.scan_k, setup.compiler_options
    keys_B = example_keys(0, np.arange(1))
    x, t = jnp.full((1, length), models.process.mask_id, jnp.int32), jnp.ones((1,))

    def denoiser(p):
        return lambda x, t: apply_model(gd, p, x, t)

    sampler = compile_timed(jax.jit(lambda p, keys: sample(denoiser(p), rule, keys, length, k)),
                            params, keys_B, options=opts)
    forward = compile_timed(jax.jit(lambda p, x, t: apply_model(gd, p, x, t)), params, x, t, options=opts)[0]
    scanned = compile_timed(jax.jit(lambda p, x: scanned_passes(lambda x: denoiser(p)(x, t), x, k)), params, x, options=opts)[0]

    def one_step(p, tokens_BL, keys, i):
        grid = time_grid(k)
        return rule.step(denoiser(p), tokens_BL, grid[i], grid[i + 1], position_keys(keys, i, jnp.arange(length)), ())[0]

    step = compile_timed(jax.jit(one_step), params, x, keys_B, jnp.int32(0), options=opts)[0]
    steps_i = [jnp.int32(i) for i in range(k)]

    def python_loop():
        tokens = x
        for i in steps_i:
            tokens = step(params, tokens, keys_B, i)
        return tokens

    calls = {
        "scan_s": lambda: sampler[0](params, keys_B),
        "separate_forward_s": lambda: [forward(params, x, t) for _ in range(k)],
        "scanned_forward_s": lambda: scanned(params, x),
        "python_loop_steps_s": python_loop,
    }
    rounds = {key: [] for key in calls}
    for _ in range(SCAN_ROUNDS):  # the programs in turn; each figure: the median of its rounds
        for key, call in calls.items():
            rounds[key].append(median_time(call, setup.warmup, setup.reps)[0])
    row = {key: float(np.median(v)) for key, v in rounds.items()}
    return dict(
        rule=name, k=k, length=length, batch=1, scan_compile_s=sampler[1], **row,
        ratio_vs_forward=row["scan_s"] / row["separate_forward_s"],
        ratio_vs_scanned_forward=row["scan_s"] / row["scanned_forward_s"],
        ratio_vs_python_loop=row["scan_s"] / row["python_loop_steps_s"],
    )


def _compile_times(setup: Setup, models: Models, rule) -> dict:
    length, keys_B = setup.sizes[0], example_keys(0, np.arange(1))
    seconds = {}
    for num_steps in (8, 1024):
        fn = jax.jit(lambda p, keys, n=num_steps: sample(
            lambda x, t: apply_model(models.graphdef, p, x, t), rule, keys, length, n))
        seconds[num_steps] = compile_timed(fn, models.params, keys_B, options=setup.compiler_options)[1]
    return dict(compile_k8_s=seconds[8], compile_k1024_s=seconds[1024], compile_ratio=seconds[1024] / seconds[8])
