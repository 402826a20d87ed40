"""The samplers' token draw: Gumbel-argmax (one random number per token) vs the two-level
inverse CDF (two per position), ancestral masked sampling of 128 tokens with a random
2-layer d_model-128 model (V 2,048) on this CPU; each pair run twice, alternating.

    python benchmarks/draws/bench_draw.py      # writes results.json beside this file
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import jax
import jax.numpy as jnp
import numpy as np

import dllm_jax.sampling.draws as D
from dllm_jax.config import MeshConfig, ModelConfig, NoiseConfig
from dllm_jax.diffusion import make_objective
from dllm_jax.nn import apply_model, create_model
from dllm_jax.sampling import ancestral, sample
from dllm_jax.sampling.driver import example_keys
from dllm_jax.sharding import make_mesh

mesh = make_mesh(MeshConfig())
cfg = ModelConfig(num_tokens=2048, max_len=128, d_model=128, num_layers=2, num_heads=4, time_conditioning=False)
g, p = create_model(cfg, mesh)
obj = make_objective(NoiseConfig(process="masked"), cfg.num_tokens)


def median_s(fn, *args, reps=9):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def sampler(num_steps):
    rule = ancestral(obj)
    return jax.jit(lambda p, k: sample(lambda x, t: apply_model(g, p, x, t), rule, k, 128, num_steps)[0])


out = {}
forward = jax.jit(lambda p, x: apply_model(g, p, x))
for B, K in [(1, 16), (1, 64), (4, 64)]:
    keys = example_keys(0, jnp.arange(B))
    for method in ["gumbel", "inverse_cdf", "gumbel", "inverse_cdf"]:
        D.DRAW_METHOD = method
        r = median_s(sampler(K), p, keys)
        fw = median_s(forward, p, jnp.zeros((B, 128), jnp.int32)) * K
        row = out.setdefault(f"B{B}_K{K}_{method}", [])
        row.append({"sample_s": r, "tokens_per_s": B * 128 / r, "vs_bare_forwards": r / fw})
        print(f"B={B} K={K} {method:12s} {r*1e3:7.1f} ms  {B*128/r:8.0f} tok/s  {r/fw:.2f}x the {K} bare forwards")
Path(__file__).with_name("results.json").write_text(json.dumps(out, indent=1) + "\n")
