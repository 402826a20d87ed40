"""Peer mode: google-deepmind/md4's configuration on our code, beside md4's recorded figures.

md4 is not a dependency: its figures were measured on the same machine by
``benchmarks/peer_md4/md4_bench.py`` (md4's own train step and sampler, in a virtualenv of
its own) and are read from ``benchmarks/peer_md4/md4_<platform>.json``, with the md4 commit.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax

from dllm_jax.config import MeshConfig, ModelConfig, NoiseConfig, TrainConfig
from dllm_jax.diffusion import make_objective
from dllm_jax.sampling.ancestral import ancestral
from dllm_jax.sharding import make_mesh

from .sampling import random_params, time_generate
from .setup import Setup
from .training import train_step_time

# ---- md4's configuration on our code --------------------------------------------------

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "peer_md4"
# md4/configs/md4/openwebtext.py shrunk as in the md4 run: V 8,192, L 128, 6 x 256 (8 heads of
# 32), GLU hidden 704, adaLN-Zero time conditioning (a 32-wide time embedding), float32.
MD4_MODEL = ModelConfig(num_tokens=8192, max_len=128, d_model=256, num_layers=6, num_heads=8, mlp_dim=704,
                        time_conditioning=True, time_embed_dim=32)
MD4_TINY = dataclasses.replace(MD4_MODEL, num_tokens=64, max_len=16, d_model=32, num_layers=2, num_heads=2,
                               mlp_dim=64, time_embed_dim=16)


def reference(platform: str) -> dict:
    """md4's recorded figures on ``platform`` (``benchmarks/peer_md4/md4_<platform>.json``)."""
    path = REFERENCE_DIR / f"md4_{platform}.json"
    if not path.exists():
        raise ValueError(f"no md4 reference figures for platform {platform!r}: {path} does not exist "
                         "(measure them with benchmarks/peer_md4/md4_bench.py)")
    return json.loads(path.read_text())


def peer_md4(setup: Setup, platform: str) -> dict:
    """Our train step (batch x 128) and ancestral sampler (4 x 128, K = 8 / 64 / 256) at md4's
    configuration and optimizer (AdamW, b2 0.999, no weight decay, no clipping, EMA 0.9999),
    beside md4's; ``--tiny`` shrinks the model and the counts (a test of the code path: its
    ratios compare different sizes and mean nothing)."""
    ref = reference(platform)
    rc = ref["config"]
    cfg = MD4_TINY if setup.tiny else MD4_MODEL
    batch, seq, sample_batch = (4, 16, 2) if setup.tiny else (rc["train_batch"], rc["seq_len"], rc["sample_batch"])
    train = TrainConfig(batch_size=batch, seq_len=seq, steps=1000, warmup_steps=0, b2=0.999, weight_decay=0.0,
                        grad_clip=0.0, ema_decay=rc["ema_rate"])
    rows = []
    for variant, model in [("layer scan", cfg), ("unrolled", dataclasses.replace(cfg, scan_unroll=cfg.num_layers))]:
        compile_s, step_s, state = train_step_time(setup, model, train, reps=max(setup.train_steps, 5))
        rows.append(dict(variant=variant, compile_s=compile_s, step_s=step_s,
                         params=sum(x.size for x in jax.tree.leaves(state.params))))
    md4_train = ref["results"]["train_step_s"]
    graphdef, params = random_params(cfg, make_mesh(MeshConfig()))
    rule = ancestral(make_objective(NoiseConfig(), cfg.num_tokens))
    sampler = []
    for k, md4_k in ref["results"]["sampler"].items():
        k = 4 if setup.tiny else int(k)
        _, compile_s, run_s, nfe, _ = time_generate(setup, graphdef, params, seq, sample_batch, rule, k, None, "none")
        sampler.append(dict(k=k, run_s=run_s, per_step_s=run_s / k, passes=int(nfe.max()), compile_s=compile_s,
                            md4_per_step_s=md4_k["per_step_s"], md4_passes=md4_k["network_passes"],
                            ratio=(run_s / k) / md4_k["per_step_s"]))
    return dict(
        peer="md4", md4_commit=ref["md4_commit"], md4_jax=ref["jax"], md4_config=rc, tiny=setup.tiny,
        model=dataclasses.asdict(cfg), train_batch=batch, seq_len=seq, sample_batch=sample_batch,
        train=[dict(r, md4_step_s=md4_train, ratio=r["step_s"] / md4_train) for r in rows], sampler=sampler,
    )
