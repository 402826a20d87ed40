"""Speed benchmark: device peaks, diffusion sampling vs AR decoding, scan overhead, training.

    python -m experiments.benchmark [--tiny] [--out benchmarks/results] [--sizes 256,1024]
        [--batch 1,32] [--steps 16,64,256,L] [--cached_steps L,4L] [--device_label NAME]
        [--run_dir RUN] [--sections sampling,scan,training]

Writes ``<out>/<device-slug>.json`` and regenerates ``<out>/../RESULTS.md`` (one section
per JSON file in ``<out>``, see ``render_markdown``). Targets are measured, never asserted.

What is measured, and how:
- Peaks, in the same run: a large matmul (FLOP/s) and a large elementwise copy (bytes
  read + written per second), at the start and at the end of the run; the best of each is
  kept (other work on a shared machine only lowers them). Balance = FLOP/s / bytes/s.
- Sampling: random-init models (speed does not depend on the weights; ``--run_dir`` loads a
  trained diffusion model instead). Every program is compiled ahead of time (lower +
  compile = ``compile_s``), then run ``warmup`` times and timed ``reps`` times
  (``run_s`` = median, after ``block_until_ready``; fewer, at least one, when a run is
  longer than ``time_budget_s``). tokens/s = batch * length / run_s. ``--tiny`` (for tests)
  compiles the timed programs without LLVM optimisation, to compile fast.
- FLOPs and bytes come from XLA's cost analysis. XLA counts a while loop's body once (a
  probe at start-up checks this, ``cost.loops`` in the JSON), and the model's layers and the
  sampler's steps are loops, so the total is rebuilt as the sum over network passes of the
  cost of one compiled pass of that shape, whose layer scan is corrected by adding
  (num_layers - 1) x the cost of one compiled layer. A sampler pass runs when any row needs
  it, so the count used is the largest NFE over the batch (a lower bound for batched rules
  that skip passes). The step rules' own work (draws, sorting) is left out; ``xla_program``
  keeps the uncorrected cost of the whole program and ``flops_analytic`` a formula
  (2 x matmul params x tokens + 4 x layers x d_model x keys per token) to cross-check.
- Roofline: intensity = FLOPs / bytes vs the machine balance: above it compute-bound, below
  memory-bound (XLA's bytes count every fusion's operands and results as memory traffic).
- Training: MFU = (6 x matmul params + 12 x layers x d_model x seq_len) x tokens/s / peak
  (PaLM's formula; matmul params exclude the input embedding).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dllm_jax.config import MeshConfig, ModelConfig, NoiseConfig, TrainConfig
from dllm_jax.diffusion import make_objective
from dllm_jax.nn.attention import KVCache
from dllm_jax.nn.layers import rotary_tables
from dllm_jax.nn.model import abstract_model, apply_model, param_shardings
from dllm_jax.nn.transformer import Block, count_params
from dllm_jax.sampling.ancestral import ancestral
from dllm_jax.sampling.canvas import round_up
from dllm_jax.sampling.draws import Logits, position_keys
from dllm_jax.sampling.driver import example_keys, sample, time_grid
from dllm_jax.sampling.generate import generate_program
from dllm_jax.sampling.kv_decode import ar_decode_program
from dllm_jax.sampling.rules import make_rule
from dllm_jax.sharding import make_mesh
from dllm_jax.training import TrainState, jit_train_step, make_optimizer, make_train_step

# Cost-only compiles skip LLVM optimisation: cost analysis reads the optimised HLO, unchanged.
COST_ONLY = {"xla_backend_optimization_level": 0}
SECTIONS = ("sampling", "scan", "training")
RANDOM_NOTE = "random N(0, 0.02^2) weights: speed does not depend on them"
SAMPLING_NOTE = (
    "GFLOP and GB: the network passes only (XLA cost of one pass x passes), not the step rules' "
    "own work (draws over the vocabulary at every position, sorting). Rules that skip passes "
    "(cached, threshold) run one for the whole batch when any row needs it: at batch > 1 the "
    "count used, the largest NFE over the rows, is a lower bound. K/blk: steps per block."
)
SCAN_NOTE = (
    "The first ratio is the target's (scan sampler, forward + step rule, vs the forward alone); "
    "the second isolates the loop (the same steps, each a jitted call from Python)."
)
TARGETS = {
    "scan": "scan sampler <= 1.10 x K separate jitted forward passes",
    "compile": "compile time at K=1024 <= 1.5 x at K=8",
    "train_cpu": "training >= 50% of the matmul peak (CPU, d_model=512)",
    "train_gpu": "training >= 40% MFU (GPU, ~125M params, bf16)",
    "ar_gpu": "diffusion >= 3 x AR tokens/s at 256 tokens, batch 1 (GPU only)",
}


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything one benchmark run measures (stored in the JSON as ``config``)."""

    model: ModelConfig
    train_model: ModelConfig
    train_batch: int
    train_seq: int
    train_steps: int
    sizes: tuple[int, ...]
    batches: tuple[int, ...]
    steps: tuple[str, ...]
    cached_steps: tuple[str, ...]
    block: int
    scan_k: int
    matmul_n: int
    matmul_dtype: str
    copy_mb: int
    warmup: int
    reps: int
    sections: tuple[str, ...]
    tiny: bool
    run_dir: str | None = None
    compiler_options: dict | None = None  # of the timed programs; tiny mode compiles fast (O0)
    time_budget_s: float | None = None  # fewer timed runs (>= 1) when one run is this long


def default_setup(args, platform: str) -> Setup:
    """Presets: ``tiny`` (tests), CPU (a few minutes), GPU (GPT-2-small-ish, bf16)."""
    gpu = platform == "gpu"
    if args.tiny:
        model = ModelConfig(num_tokens=61, max_len=32, d_model=32, num_layers=2, num_heads=2)
        train = model
        sizes, batches, steps, cached = (16,), (1, 2), ("4L",), ("4L",)
        extra = dict(
            train_batch=4,
            train_seq=32,
            train_steps=3,
            block=8,
            scan_k=8,
            matmul_n=1024,
            matmul_dtype="float32",
            copy_mb=32,
            warmup=1,
            reps=2,
            compiler_options=COST_ONLY,
        )
    elif gpu:
        model = ModelConfig(
            num_tokens=50257,
            max_len=1024,
            d_model=768,
            num_layers=12,
            num_heads=12,
            dtype="bfloat16",
            vocab_multiple=128,
        )
        train = model
        sizes, batches, steps, cached = (256, 1024), (1, 32), ("16", "64", "256", "L"), ("L", "4L")
        extra = dict(
            train_batch=16,
            train_seq=1024,
            train_steps=10,
            block=32,
            scan_k=64,
            matmul_n=8192,
            matmul_dtype="bfloat16",
            copy_mb=1024,
            warmup=1,
            reps=3,
            time_budget_s=60.0,
        )
    else:
        model = ModelConfig(num_tokens=1024, max_len=128, d_model=128, num_layers=2, num_heads=4)
        train = ModelConfig(num_tokens=4096, max_len=128, d_model=512, num_layers=4, num_heads=8)
        sizes, batches, steps, cached = (64, 128), (1, 4), ("16", "L"), ("L",)
        extra = dict(
            train_batch=4,
            train_seq=128,
            train_steps=3,
            block=32,
            scan_k=64,
            matmul_n=4096,
            matmul_dtype="float32",
            copy_mb=256,
            warmup=1,
            reps=3,
            time_budget_s=10.0,
        )
    sizes = _ints(args.sizes) if args.sizes else sizes
    batches = _ints(args.batch) if args.batch else batches
    steps = tuple(args.steps.split(",")) if args.steps else steps
    cached = tuple(args.cached_steps.split(",")) if args.cached_steps else cached
    extra.update({k: getattr(args, k) for k in ("reps", "block") if getattr(args, k) is not None})
    sections = tuple(args.sections.split(",")) if args.sections else ()
    _check(sizes, batches, steps + cached, sections, extra)
    need = max(round_up(s, extra["block"]) for s in sizes)
    model = dataclasses.replace(model, max_len=max(model.max_len, need))
    return Setup(
        model=model,
        train_model=train,
        sizes=sizes,
        batches=batches,
        steps=steps,
        cached_steps=cached,
        sections=sections,
        tiny=args.tiny,
        run_dir=args.run_dir,
        **extra,
    )


def _check(sizes, batches, step_specs, sections, extra) -> None:
    if min(sizes + batches) < 1 or extra["reps"] < 1 or extra["block"] < 1:
        raise ValueError(
            f"sizes, batches, reps and block must be >= 1, got {sizes}, {batches}, "
            f"{extra['reps']}, {extra['block']}"
        )
    bad = [s for s in step_specs if not re.fullmatch(r"\d+|\d*L", s) or s in ("0", "0L")]
    if bad:
        raise ValueError(f"step counts must be positive integers, L or nL (n x length), got {bad}")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; expected some of {SECTIONS}")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def resolve_steps(specs, length: int) -> list[int]:
    """'16', 'L', '4L' -> K values for a generation of ``length`` tokens (<= 4L, deduplicated)."""
    out = []
    for spec in specs:
        k = int(spec[:-1] or 1) * length if spec.endswith("L") else int(spec)
        if k <= 4 * length and k not in out:
            out.append(k)
    return out


# ---- timing and cost ------------------------------------------------------------------


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
                lambda b, *a: b.chunk(*a),
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
                lambda b, x, st, c, m, s, co, cd: b.decode(x, st, c, s, co, cd),
                batch,
                1,
                keys,
            )
        return self._memo[key]

    def _with_layers(self, config, cost, call, batch, queries, keys):
        """Add (num_layers - 1) x one compiled layer when XLA counted the layer scan once."""
        if self.loops != "once" or config.num_layers == 1:
            return cost
        bgd, bstate = nnx.split(nnx.eval_shape(lambda: Block(config, rngs=nnx.Rngs(0))))
        dtype = jnp.dtype(config.dtype)
        kv = _sds((batch, keys, config.num_heads, config.head_dim), dtype)
        cond = (
            _sds((batch, config.time_embed_dim), jnp.float32) if config.time_conditioning else None
        )

        def layer(bstate, x, start, k, v, mask, cond):
            sin, cos = rotary_tables(config.max_len, config.head_dim, config.rope_theta)
            return call(
                nnx.merge(bgd, bstate, copy=True), x, start, KVCache(k, v), mask, sin, cos, cond
            )

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


# ---- sampling -------------------------------------------------------------------------


@dataclasses.dataclass
class Models:
    """The models compared: a diffusion model, its block-causal twin, an AR twin."""

    config: ModelConfig
    graphdef: object
    params: object
    process: object
    block_config: ModelConfig
    block_graphdef: object
    block_params: object
    ar_config: ModelConfig
    ar_graphdef: object
    ar_params: object


def random_params(config: ModelConfig, mesh, seed: int = 0):
    """(graphdef, params) with N(0, 0.02^2) parameters drawn by numpy, placed in their shardings.

    Not the model's initialisers: their jitted init program takes seconds to compile, and
    speed does not depend on the values.
    """
    graphdef, abstract = abstract_model(config)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda s: (0.02 * rng.standard_normal(s.shape, np.float32)).astype(s.dtype), abstract
    )
    return graphdef, jax.device_put(params, param_shardings(config, mesh))


def build_models(setup: Setup) -> Models:
    """The diffusion model and its twins; without time conditioning they share parameters."""
    mesh = make_mesh(MeshConfig())
    if setup.run_dir:
        from dllm_jax.training.loop import load_run

        exp, graphdef, params, _, process, _ = load_run(setup.run_dir)
        if exp.noise.process != "masked":
            raise ValueError(
                f"--run_dir needs a masked diffusion run, {setup.run_dir} is {exp.noise.process!r}"
            )
        config = dataclasses.replace(exp.model, max_len=max(exp.model.max_len, setup.model.max_len))
    else:
        config = setup.model
        graphdef, params = random_params(config, mesh)
        process = make_objective(NoiseConfig(), config.num_tokens)
    block = dataclasses.replace(
        config, attention="block_causal", block_size=setup.block, time_conditioning=False
    )
    ar = dataclasses.replace(config, attention="causal", block_size=1, time_conditioning=False)
    if config.time_conditioning:  # the twins have no time layers: parameters of their own
        twins = (*random_params(block, mesh), *random_params(ar, mesh))
    else:
        twins = (abstract_model(block)[0], params, abstract_model(ar)[0], params)
    return Models(
        config, graphdef, params, process, block, twins[0], twins[1], ar, twins[2], twins[3]
    )


def sampling_records(setup: Setup, models: Models, costs: PassCosts, peaks: dict) -> list[dict]:
    records = []
    for length in setup.sizes:
        for batch in setup.batches:
            for spec in sampling_plan(setup, models, length):
                record = measure_sampler(setup, models, costs, length, batch, **spec)
                records.append(finish_record(record, peaks))
                print(_summary(records[-1]), flush=True)
    return records


def sampling_plan(setup: Setup, models: Models, length: int) -> list[dict]:
    """The methods measured at one length: name, rule, K, block, cache."""
    proc, cfg, blk = models.process, models.config, setup.block
    plan = [
        dict(method="ancestral", rule=ancestral(proc), k=k)
        for k in resolve_steps(setup.steps, length)
    ]
    if not cfg.time_conditioning:
        plan += [
            dict(method="cached", rule=make_rule("cached", proc), k=k)
            for k in resolve_steps(setup.cached_steps, length)
        ]
    plan.append(
        dict(method="threshold0.9", rule=make_rule("threshold", proc, threshold=0.9), k=length)
    )
    if cfg.attention == "bidirectional":
        plan.append(
            dict(
                method=f"approx-cache-blk{blk}",
                rule=ancestral(proc),
                k=blk,
                block=blk,
                cache="approximate",
            )
        )
    plan.append(
        dict(method=f"exact-cache-blk{blk}", rule=ancestral(proc), k=blk, block=blk, cache="exact")
    )
    plan.append(dict(method="ar-kv-cache", rule=None, k=length))
    return plan


def measure_sampler(
    setup,
    models: Models,
    costs: PassCosts,
    length,
    batch,
    method,
    rule,
    k,
    block=None,
    cache="none",
):
    """Compile, time and cost one sampler at one (length, batch)."""
    if method == "ar-kv-cache":
        cfg = models.ar_config
        keys_B, forced = example_keys(0, np.arange(batch)), jnp.zeros((batch, length), jnp.int32)
        args = (
            models.ar_graphdef,
            models.ar_params,
            keys_B,
            forced,
            cfg.special.bos,
            Logits(),
            jnp.zeros((batch,), jnp.int32),
        )
        compiled, compile_s = compile_timed(ar_decode_program, *args, options=setup.compiler_options)
        run_s, _ = median_time(
            lambda: compiled(*args[1:4], args[6]), setup.warmup, setup.reps, setup.time_budget_s
        )
        nfe = np.full((batch,), length)
        passes = [(costs.decode(cfg, batch, length), analytic_flops(cfg, batch, length), length)]
    else:
        exact = cache == "exact"
        cfg = models.block_config if exact else models.config
        gd, params = (
            (models.block_graphdef, models.block_params)
            if exact
            else (models.graphdef, models.params)
        )
        program, args = generate_program(
            gd, params, [[]] * batch, length=length, rule=rule, num_steps=k, block_size=block,
            cache=cache,
        )
        compiled, compile_s = compile_timed(program, *args, options=setup.compiler_options)
        run_s, out = median_time(
            lambda: compiled(*args[3:]), setup.warmup, setup.reps, setup.time_budget_s
        )
        nfe = np.asarray(out[3])
        passes = pass_counts(costs, cfg, batch, args[5].shape[1], block, cache, int(nfe.max()))
    flops = sum(c["flops"] * n for c, _, n in passes)
    return dict(
        name=f"{method}_K{k}_L{length}_B{batch}"
        if method != "ar-kv-cache"
        else f"{method}_L{length}_B{batch}",
        method=method,
        length=length,
        batch=batch,
        k=k,
        block=block,
        cache=cache,
        nfe_mean=float(nfe.mean()),
        nfe_max=int(nfe.max()),
        compile_s=compile_s,
        run_s=run_s,
        flops=flops,
        bytes=sum(c["bytes"] * n for c, _, n in passes),
        flops_analytic=sum(a * n for _, a, n in passes),
        passes=int(sum(n for *_, n in passes)),
        xla_program=xla_cost(compiled),
    )


def pass_counts(costs: PassCosts, cfg, batch, canvas, block, cache, max_nfe):
    """[(cost of one pass, analytic FLOPs of it, number of passes)] of one generation."""
    if cache == "none":
        return [
            (
                costs.chunk(cfg, batch, canvas, canvas),
                analytic_flops(cfg, batch * canvas, canvas),
                max_nfe,
            )
        ]
    chunk = (costs.chunk(cfg, batch, block, canvas), analytic_flops(cfg, batch * block, canvas))
    if cache == "exact":  # K steps and one cache write per block, all over the block
        return [(*chunk, max_nfe)]
    refresh = canvas // block  # one full pass per block refreshes the approximate cache
    return [
        (
            costs.chunk(cfg, batch, canvas, canvas),
            analytic_flops(cfg, batch * canvas, canvas),
            refresh,
        ),
        (*chunk, max_nfe - refresh),
    ]


def finish_record(r: dict, peaks: dict) -> dict:
    """Derived figures: throughput, achieved rates, fractions of peak, roofline label."""
    r["tokens"] = r["batch"] * r["length"]
    r["tokens_per_s"] = r["tokens"] / r["run_s"]
    r["s_per_sample"] = r["run_s"] / r["batch"]
    r["flops_per_s"] = r["flops"] / r["run_s"]
    r["bytes_per_s"] = r["bytes"] / r["run_s"]
    r["frac_peak_flops"] = r["flops_per_s"] / peaks["matmul"]["flops_per_s"]
    r["frac_peak_bytes"] = r["bytes_per_s"] / peaks["copy"]["bytes_per_s"]
    r["intensity"] = r["flops"] / r["bytes"] if r["bytes"] else math.inf
    r["bound"] = "compute" if r["intensity"] >= peaks["machine_balance"] else "memory"
    return r


def _summary(r: dict) -> str:
    return (
        f"{r['name']:<34} compile {r['compile_s']:6.2f}s run {r['run_s']:8.4f}s NFE {r['nfe_mean']:7.1f} "
        f"{r['tokens_per_s']:10.1f} tok/s {r['frac_peak_flops']:6.1%} peak {r['bound']}-bound"
    )


# ---- scan overhead and compile time ---------------------------------------------------


def scan_overhead(setup: Setup, models: Models) -> dict:
    """The K-step scan sampler vs K separate jitted passes, and compile time vs K.

    Separate passes: K calls of the jitted forward on one input, dispatched back to back
    (the network's cost alone), and a Python loop of K jitted steps (forward + rule).
    """
    gd, params, length, k, rule = (
        models.graphdef,
        models.params,
        setup.sizes[0],
        setup.scan_k,
        ancestral(models.process),
    )
    keys_B, opts = example_keys(0, np.arange(1)), setup.compiler_options
    compiled = {}
    for num_steps in (8, 1024, k):  # the compile-time ratio, then the timed K (compiled once)
        if num_steps not in compiled:
            fn = jax.jit(
                lambda p, keys, n=num_steps: sample(
                    lambda x, t: apply_model(gd, p, x, t), rule, keys, length, n
                )
            )
            compiled[num_steps] = compile_timed(fn, params, keys_B, options=opts)
    scan_s, _ = median_time(lambda: compiled[k][0](params, keys_B), setup.warmup, setup.reps)
    x, t = jnp.full((1, length), models.process.mask_id, jnp.int32), jnp.ones((1,))
    forward = compile_timed(
        jax.jit(lambda p, x, t: apply_model(gd, p, x, t)), params, x, t, options=opts
    )[0]
    forward_s, _ = median_time(
        lambda: [forward(params, x, t) for _ in range(k)], setup.warmup, setup.reps
    )

    def one_step(p, tokens_BL, keys, i):
        grid, denoise = time_grid(k), lambda x, t: apply_model(gd, p, x, t)
        return rule.step(
            denoise, tokens_BL, grid[i], grid[i + 1], position_keys(keys, i, jnp.arange(length)), ()
        )[0]

    step = compile_timed(jax.jit(one_step), params, x, keys_B, jnp.int32(0), options=opts)[0]
    steps_i = [jnp.int32(i) for i in range(k)]

    def python_loop():
        tokens = x
        for i in steps_i:
            tokens = step(params, tokens, keys_B, i)
        return tokens

    loop_s, _ = median_time(python_loop, setup.warmup, setup.reps)
    compile_8, compile_1024 = compiled[8][1], compiled[1024][1]
    return dict(
        k=k,
        length=length,
        batch=1,
        scan_s=scan_s,
        scan_compile_s=compiled[k][1],
        separate_forward_s=forward_s,
        python_loop_steps_s=loop_s,
        ratio_vs_forward=scan_s / forward_s,
        ratio_vs_python_loop=scan_s / loop_s,
        compile_k8_s=compile_8,
        compile_k1024_s=compile_1024,
        compile_ratio=compile_1024 / compile_8,
    )


# ---- training -------------------------------------------------------------------------


def training(setup: Setup) -> dict:
    """Train-step throughput on synthetic tokens (``finalize`` adds the MFU)."""
    cfg, batch, seq = setup.train_model, setup.train_batch, setup.train_seq
    train = TrainConfig(batch_size=batch, seq_len=seq, steps=1000, warmup_steps=0)
    mesh = make_mesh(MeshConfig())
    graphdef, params = random_params(cfg, mesh)
    tx = make_optimizer(train, abstract_model(cfg)[1])
    state = TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=jax.jit(tx.init)(params)
    )
    step = jit_train_step(
        make_train_step(make_objective(NoiseConfig(), cfg.num_tokens), graphdef, tx, train),
        state,
        mesh,
    )
    tokens = jax.random.randint(jax.random.key(0), (batch, seq), 0, cfg.num_tokens, jnp.int32)
    data = {"tokens": tokens, "loss_mask": jnp.ones((batch, seq), bool), "index": jnp.arange(batch)}
    with jax.set_mesh(mesh):
        compiled, compile_s = compile_timed(
            step.jitted, state, data, options=setup.compiler_options
        )
        holder = [state]

        def run():
            holder[0], metrics = compiled(holder[0], data)
            return metrics

        step_s, _ = median_time(run, setup.warmup, setup.train_steps, setup.time_budget_s)
    n_mm = count_params(state.params) - cfg.vocab_size * cfg.d_model
    flops_per_token = 6.0 * n_mm + 12.0 * cfg.num_layers * cfg.d_model * seq
    tokens_per_s = batch * seq / step_s
    return dict(
        model=dataclasses.asdict(cfg),
        params=count_params(state.params),
        matmul_params=n_mm,
        batch=batch,
        seq_len=seq,
        compile_s=compile_s,
        step_s=step_s,
        tokens_per_s=tokens_per_s,
        flops_per_token=flops_per_token,
        formula="(6 * matmul params + 12 * layers * d_model * seq_len) * tokens/s / matmul peak",
    )


# ---- results: JSON and markdown -------------------------------------------------------


def device_info(label: str | None, tiny: bool) -> tuple[dict, str]:
    """(device description, file slug)."""
    dev = jax.devices()[0]
    kind, platform = dev.device_kind, dev.platform
    info = {"device_kind": kind, "platform": platform, "num_devices": jax.device_count()}
    if platform == "cpu":
        info["cpu"] = _cpu_model()
    name = label or (platform if kind.lower() == platform else f"{platform}-{kind}")
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ("-tiny" if tiny else "")
    info["label"] = name
    return info, slug


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def targets(result: dict) -> list[dict]:
    """Each target of the issue with the measured figure and whether it is met (None: n/a)."""
    gpu, scan, tr = (
        result["device"]["platform"] == "gpu",
        result.get("scan"),
        result.get("training"),
    )
    out = [
        dict(target=TARGETS["scan"], measured="not measured", met=None),
        dict(target=TARGETS["compile"], measured="not measured", met=None),
        dict(
            target=TARGETS["train_gpu" if gpu else "train_cpu"], measured="not measured", met=None
        ),
        dict(target=TARGETS["ar_gpu"], measured="no 256-token batch-1 records", met=None),
    ]
    if scan:
        out[0].update(
            measured=f"{scan['ratio_vs_forward']:.2f} x (K={scan['k']})",
            met=scan["ratio_vs_forward"] <= 1.10,
        )
        out[1].update(measured=f"{scan['compile_ratio']:.2f} x", met=scan["compile_ratio"] <= 1.5)
    if tr:
        model = f"d_model={tr['model']['d_model']}, {tr['params'] / 1e6:.1f}M params, {tr['model']['dtype']}"
        out[2].update(
            measured=f"{tr['mfu']:.1%} ({model})", met=tr["mfu"] >= (0.40 if gpu else 0.50)
        )
    recs = [r for r in result.get("records", []) if r["length"] == 256 and r["batch"] == 1]
    ar = [r for r in recs if r["method"] == "ar-kv-cache"]
    diff = [r for r in recs if r["method"] != "ar-kv-cache"]
    if ar and diff:
        best = max(diff, key=lambda r: r["tokens_per_s"])
        ratio = best["tokens_per_s"] / ar[0]["tokens_per_s"]
        out[3].update(
            measured=f"{ratio:.2f} x (best: {best['name']})", met=(ratio >= 3.0) if gpu else None
        )
    return out


def write_results(result: dict, out_dir: Path, slug: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{slug}.json"
    path.write_text(json.dumps(result, indent=1, default=_jsonable))
    return path


def _jsonable(x):
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def render_markdown(results_dir) -> str:
    """A markdown report: one section per ``*.json`` result in ``results_dir``."""
    files = sorted(Path(results_dir).glob("*.json"))
    parts = [
        "# Benchmark results",
        "",
        "Generated by `python -m experiments.benchmark` from `" + str(results_dir) + "/*.json`; "
        "do not edit by hand. Method notes: the docstring of `experiments/benchmark.py`.",
        "",
    ]
    for f in files:
        parts += _device_section(json.loads(f.read_text()), f.name)
    return "\n".join(parts) + "\n"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]


def _device_section(res: dict, fname: str) -> list[str]:
    dev, cfg, peaks = res["device"], res["config"], res["peaks"]
    m = cfg["model"]
    lines = [
        f"## {dev['label']} ({dev['platform']}{', ' + dev['cpu'] if 'cpu' in dev else ''})",
        "",
        f"File `{fname}`; jax {res['jax_version']}; {res['date']}; {dev['num_devices']} device(s).",
        "",
        f"Sampling model ({'loaded from ' + cfg['run_dir'] if cfg.get('run_dir') else RANDOM_NOTE}): "
        f"d_model {m['d_model']}, {m['num_layers']} layers, {m['num_heads']} heads, {m['num_tokens']} tokens, "
        f"{m['dtype']}; sizes {cfg['sizes']}, batches {cfg['batches']}, block {cfg['block']}; "
        f"median of {cfg['reps']} runs after {cfg['warmup']} warm-up"
        f"{'; compiler options ' + str(cfg['compiler_options']) if cfg.get('compiler_options') else ''}.",
        "",
        f"Peaks (the best of {len(peaks.get('samples', [peaks]))} measurements, at the start and the end): "
        f"matmul {peaks['matmul']['flops_per_s'] / 1e9:,.1f} GFLOP/s ({peaks['matmul']['n']}^3 "
        f"{peaks['matmul']['dtype']}); copy {peaks['copy']['bytes_per_s'] / 1e9:,.1f} GB/s "
        f"({peaks['copy']['megabytes']} MB); machine balance {peaks['machine_balance']:.1f} FLOP/byte. "
        f"Cost: {res['cost']['method']}.",
        "",
    ]
    lines += ["### Targets", ""]
    lines += _table(
        ["target", "measured", "met"],
        [[t["target"], t["measured"], _yes(t["met"])] for t in res["targets"]],
    )
    if res.get("records"):
        lines += ["### Sampling", ""]
        header = "name|L|B|K|NFE|compile s|run s|s/sample|tok/s|GFLOP|GB|GFLOP/s (% peak)|GB/s (% peak)|FLOP/B|bound"
        lines += _table(header.split("|"), [_record_row(r) for r in res["records"]])
        lines += [SAMPLING_NOTE, ""]
    if res.get("scan"):
        s = res["scan"]
        lines += ["### Scan overhead (ancestral, batch 1)", ""]
        header = f"K|L|scan s|{s['k']} jitted forwards s|ratio|Python loop of {s['k']} jitted steps s|ratio|"
        cells = [
            ("k", "d"),
            ("length", "d"),
            ("scan_s", ".4f"),
            ("separate_forward_s", ".4f"),
            ("ratio_vs_forward", ".2f"),
            ("python_loop_steps_s", ".4f"),
            ("ratio_vs_python_loop", ".2f"),
            ("compile_k8_s", ".2f"),
            ("compile_k1024_s", ".2f"),
            ("compile_ratio", ".2f"),
        ]
        header += "compile K=8 s|compile K=1024 s|ratio"
        lines += _table(header.split("|"), [[format(s[k], f) for k, f in cells]]) + [SCAN_NOTE, ""]
    if res.get("training"):
        t, m = res["training"], res["training"]["model"]
        lines += ["### Training (synthetic tokens)", "", f"MFU = {t['formula']}.", ""]
        row = [
            f"d{m['d_model']} x {m['num_layers']}L {m['dtype']}",
            f"{t['params'] / 1e6:.2f}M",
            f"{t['batch']} x {t['seq_len']}",
            f"{t['compile_s']:.2f}",
            f"{t['step_s']:.4f}",
            f"{t['tokens_per_s']:,.0f}",
            f"{t['mfu']:.1%}",
        ]
        lines += _table(
            ["model", "params", "batch x seq", "compile s", "step s", "tok/s", "MFU"], [row]
        )
    return lines


def _yes(met) -> str:
    return "n/a" if met is None else ("yes" if met else "**no**")


def _record_row(r: dict) -> list:
    k = f"{r['k']}/blk" if r["block"] else r["k"]
    return [
        r["name"],
        r["length"],
        r["batch"],
        k,
        f"{r['nfe_mean']:.1f}",
        f"{r['compile_s']:.2f}",
        f"{r['run_s']:.4f}",
        f"{r['s_per_sample']:.4f}",
        f"{r['tokens_per_s']:,.1f}",
        f"{r['flops'] / 1e9:,.2f}",
        f"{r['bytes'] / 1e9:,.3f}",
        f"{r['flops_per_s'] / 1e9:,.1f} ({r['frac_peak_flops']:.1%})",
        f"{r['bytes_per_s'] / 1e9:,.1f} ({r['frac_peak_bytes']:.1%})",
        f"{r['intensity']:.1f}",
        r["bound"],
    ]


# ---- entry point ----------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="a tiny model and sizes (tests, seconds)")
    p.add_argument(
        "--out", default="benchmarks/results", help="folder of the per-device JSON files"
    )
    p.add_argument("--markdown", help="report path (default: <out>/../RESULTS.md)")
    p.add_argument("--sizes", help="generated tokens, comma-separated (e.g. 256,1024)")
    p.add_argument(
        "--batch", help="batch sizes, comma-separated: latency and throughput (e.g. 1,32)"
    )
    p.add_argument(
        "--steps", help="ancestral K values: numbers, L (= length) or nL (e.g. 16,64,256,L)"
    )
    p.add_argument("--cached_steps", help="K values of the cached rule (e.g. L,4L)")
    p.add_argument("--block", type=int, help="block size of the cached block generation")
    p.add_argument("--reps", type=int, help="timed runs per measurement (median)")
    p.add_argument(
        "--sections", default=",".join(SECTIONS), help="what to measure besides the peaks"
    )
    p.add_argument("--device_label", help="device name in the report (default: from jax.devices())")
    p.add_argument(
        "--run_dir", help="load a trained masked diffusion model instead of a random one"
    )
    return p.parse_args(argv)


def finalize(result: dict) -> None:
    """Figures relative to the final peaks: records' rates and roofline, MFU, targets."""
    peaks = result["peaks"]
    for r in result.get("records", []):
        finish_record(r, peaks)
    if "training" in result:
        t = result["training"]
        t["mfu"] = t["flops_per_token"] * t["tokens_per_s"] / peaks["matmul"]["flops_per_s"]
    result["targets"] = targets(result)


def main(argv=None) -> dict:
    args = parse_args(argv)
    dev, slug = device_info(args.device_label, args.tiny)
    setup = default_setup(args, dev["platform"])
    loops = loop_counting()
    result = dict(
        device=dev,
        jax_version=jax.__version__,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        config=dataclasses.asdict(setup),
        cost=dict(
            loops=loops,
            method=(
                "XLA cost of one compiled pass x passes, layer scan corrected (XLA counts a loop body once)"
                if loops == "once"
                else "XLA cost of one compiled pass x passes (loops counted per iteration)"
            ),
        ),
    )
    peaks = measure_peaks(setup)  # measured again at the end; the best of both is kept
    print(
        f"peaks: {peaks['matmul']['flops_per_s'] / 1e9:.1f} GFLOP/s, {peaks['copy']['bytes_per_s'] / 1e9:.1f} GB/s"
    )
    if "sampling" in setup.sections or "scan" in setup.sections:
        models = build_models(setup)
        result["config"]["model"] = dataclasses.asdict(models.config)
    if "sampling" in setup.sections:
        result["records"] = sampling_records(setup, models, PassCosts(loops), peaks)
    if "scan" in setup.sections:
        result["scan"] = scan_overhead(setup, models)
    if "training" in setup.sections:
        result["training"] = training(setup)
    result["peaks"] = best_peaks([peaks, measure_peaks(setup)])
    finalize(result)
    out_dir = Path(args.out)
    path = write_results(result, out_dir, slug)
    md_path = Path(args.markdown) if args.markdown else out_dir.parent / "RESULTS.md"
    md_path.write_text(render_markdown(out_dir))
    print(f"wrote {path} and {md_path}")
    return result


if __name__ == "__main__":
    main()
