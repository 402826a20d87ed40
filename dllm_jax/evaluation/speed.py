"""Timing helpers shared by the sweep, the benchmark and the studies: wall-clock figures of
jitted programs (block until ready, compile time apart from run time)."""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import numpy as np

from dllm_jax.sampling.generate import Generation


def compile_timed(jitted, *args, options=None):
    """(compiled, seconds of tracing + lowering + compiling)."""
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile(compiler_options=options)
    return compiled, time.perf_counter() - start


def median_time(call, warmup: int, reps: int, budget_s: float | None = None):
    """(median seconds of ``reps`` calls after ``warmup`` calls, the last output).

    With ``budget_s``, the timed calls are cut to fit it (at least one), judged by the
    last warm-up call.
    """
    for _ in range(warmup):
        start = time.perf_counter()
        out = jax.block_until_ready(call())
        if budget_s is not None:
            reps = max(1, min(reps, int(budget_s / (time.perf_counter() - start))))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        out = jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def timed_batches(run: Callable[[np.ndarray], Generation], num_samples: int, batch_size: int):
    """Generate ``num_samples`` rows in batches; returns (tokens, nfe, compile_s, run_s).

    ``compile_s``: the first call (tracing, compilation and one batch) less the mean time of
    a batch in the timed runs that follow.
    """
    if num_samples < 1 or batch_size < 1 or num_samples % batch_size:
        raise ValueError(
            f"num_samples ({num_samples}) must be a positive multiple of batch_size ({batch_size}): "
            "a smaller last batch would compile again inside the timed region"
        )
    starts = list(range(0, num_samples, batch_size))
    t0 = time.perf_counter()
    run(np.arange(min(batch_size, num_samples)))  # compile (and one run)
    first_s = time.perf_counter() - t0
    toks, nfe = [], []
    t0 = time.perf_counter()
    for s in starts:
        g = run(np.arange(s, min(s + batch_size, num_samples)))
        toks.append(g.tokens)
        nfe.append(g.nfe)
    run_s = time.perf_counter() - t0
    compile_s = max(first_s - run_s / len(starts), 0.0)
    width = max(t.shape[1] for t in toks)
    toks = [np.pad(t, ((0, 0), (0, width - t.shape[1])), constant_values=-1) for t in toks]
    return np.concatenate(toks), np.concatenate(nfe), compile_s, run_s
