"""Sampling: the models compared, the methods measured, one record per sampler."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax.config import MeshConfig, ModelConfig, NoiseConfig
from dllm_jax.diffusion import make_objective
from dllm_jax.evaluation.speed import compile_timed, median_time
from dllm_jax.nn.model import abstract_model, param_shardings
from dllm_jax.sampling import draws
from dllm_jax.sampling.ancestral import ancestral
from dllm_jax.sampling.draws import Logits
from dllm_jax.sampling.driver import example_keys
from dllm_jax.sampling.generate import generate_program
from dllm_jax.sampling.kv_decode import ar_decode_program
from dllm_jax.sampling.rules import make_rule
from dllm_jax.sharding import make_mesh
from dllm_jax.training.loop import load_run

from .cost import PassCosts, analytic_flops, xla_cost
from .passes import PassTimes
from .setup import Setup, resolve_steps

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
    records, times = [], PassTimes(setup)
    for length in setup.sizes:
        for batch in setup.batches:
            for spec in sampling_plan(setup, models, length):
                record = measure_sampler(setup, models, costs, length, batch, **spec, times=times)
                records.append(finish_record(record, peaks))
                print(_summary(records[-1]), flush=True)
    return records


def sampling_plan(setup: Setup, models: Models, length: int) -> list[dict]:
    """The methods measured at one length: name, rule, K, block, cache."""
    proc, cfg, blk = models.process, models.config, setup.block
    ks = resolve_steps(setup.steps, length)
    plan = [dict(method="ancestral", rule=ancestral(proc), k=k) for k in ks]
    # The Gumbel-argmax draw (one random number per token, the earlier default) at the first K:
    # the inverse-CDF draw's speed-up, measured in the same run.
    plan.append(dict(method="ancestral-gumbel", rule=ancestral(proc), k=ks[0], draw="gumbel"))
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


def measure_sampler(setup, models: Models, costs: PassCosts, length, batch, method, rule, k, block=None,
                    cache="none", draw="inverse_cdf", times: PassTimes | None = None):
    """Compile, time and cost one sampler at one (length, batch); with ``times``, also the
    seconds of its network passes alone (``forward_s``: each pass timed on its own)."""
    if method == "ar-kv-cache":
        gd, params, cfg = models.ar_graphdef, models.ar_params, models.ar_config
        compiled, compile_s, run_s, nfe = _time_ar(setup, models, length, batch)
        shapes, name = [("decode", 1, length, length)], f"{method}_L{length}_B{batch}"
    else:
        exact = cache == "exact"
        gd, params, cfg = ((models.block_graphdef, models.block_params, models.block_config) if exact
                           else (models.graphdef, models.params, models.config))
        previous, draws.DRAW_METHOD = draws.DRAW_METHOD, draw  # read when the program is traced,
        if draw != previous:  # which jit's trace cache does not key on: trace afresh
            jax.clear_caches()
        try:
            compiled, compile_s, run_s, nfe, canvas = time_generate(
                setup, gd, params, length, batch, rule, k, block, cache)
        finally:
            draws.DRAW_METHOD = previous
            if draw != previous:
                jax.clear_caches()
        shapes, name = pass_shapes(canvas, block, cache, int(nfe.max())), f"{method}_K{k}_L{length}_B{batch}"
    cost = [costs.decode(cfg, batch, s) if kind == "decode" else costs.chunk(cfg, batch, q, s)
            for kind, q, s, _ in shapes]
    forward_s = None if times is None else sum(
        n * times.seconds(kind, gd, params, cfg, batch, q, s) for kind, q, s, n in shapes)
    return dict(
        name=name, method=method, draw=draw if rule is not None else None, length=length, batch=batch, k=k,
        block=block, cache=cache, nfe_mean=float(nfe.mean()), nfe_max=int(nfe.max()), compile_s=compile_s,
        run_s=run_s, forward_s=forward_s,
        flops=sum(c["flops"] * n for c, (*_, n) in zip(cost, shapes, strict=True)),
        bytes=sum(c["bytes"] * n for c, (*_, n) in zip(cost, shapes, strict=True)),
        flops_analytic=sum(analytic_flops(cfg, batch * q, s) * n for _, q, s, n in shapes),
        passes=int(sum(n for *_, n in shapes)),
        xla_program=xla_cost(compiled),
    )


def _time_ar(setup, models: Models, length, batch):
    """(compiled, compile s, run s, NFE per row) of AR decoding with its KV cache."""
    cfg = models.ar_config
    keys_B, forced = example_keys(0, np.arange(batch)), jnp.zeros((batch, length), jnp.int32)
    start_B = jnp.zeros((batch,), jnp.int32)
    args = (models.ar_graphdef, models.ar_params, keys_B, forced, cfg.special.bos, Logits(), start_B)
    compiled, compile_s = compile_timed(ar_decode_program, *args, options=setup.compiler_options)
    dynamic = (models.ar_params, keys_B, forced, cfg.special.bos, start_B)  # graphdef, Logits() static
    run_s, _ = median_time(lambda: compiled(*dynamic), setup.warmup, setup.reps, setup.time_budget_s)
    return compiled, compile_s, run_s, np.full((batch,), length)


def time_generate(setup, gd, params, length, batch, rule, k, block, cache):
    """(compiled, compile s, run s, NFE per row, canvas length) of one ``generate`` program."""
    program = generate_program(gd, params, [[]] * batch, length=length, rule=rule, num_steps=k,
                               block_size=block, cache=cache)
    compiled, compile_s = compile_timed(program.fn, *program.args, options=setup.compiler_options)
    run_s, out = median_time(lambda: compiled(*program.dynamic), setup.warmup, setup.reps, setup.time_budget_s)
    return compiled, compile_s, run_s, np.asarray(out[3]), program.canvas


def pass_shapes(canvas, block, cache, max_nfe) -> list[tuple[str, int, int, int]]:
    """[(kind, queries, keys, number of passes)] of one generation (kinds of ``PassTimes``)."""
    if cache == "none":
        return [("full", canvas, canvas, max_nfe)]
    if cache == "exact":
        # K steps per block over the block; a finished block is written in the next block's
        # first pass (two blocks wide), the last block in a pass of its own
        fused = canvas // block - 1
        rest = [("chunk", block, canvas, max_nfe - fused)]
        return [("chunk", 2 * block, canvas, fused)] + rest if fused else [("chunk", block, canvas, max_nfe)]
    refresh = canvas // block  # one full pass per block refreshes the approximate cache
    return [("chunk", canvas, canvas, refresh), ("chunk", block, canvas, max_nfe - refresh)]


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
    if r.get("forward_s") is not None:  # the share of the run spent outside the network passes
        r["outside_forward"] = 1.0 - r["forward_s"] / r["run_s"]
    r["bound"] = "compute" if r["intensity"] >= peaks["machine_balance"] else "memory"
    return r


def _summary(r: dict) -> str:
    return (
        f"{r['name']:<34} compile {r['compile_s']:6.2f}s run {r['run_s']:8.4f}s NFE {r['nfe_mean']:7.1f} "
        f"{r['tokens_per_s']:10.1f} tok/s {r['frac_peak_flops']:6.1%} peak {r['bound']}-bound"
    )
