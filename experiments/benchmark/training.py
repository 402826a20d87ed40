"""Training: train-step throughput on synthetic tokens."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dllm_jax.config import MeshConfig, NoiseConfig, TrainConfig
from dllm_jax.diffusion import make_objective
from dllm_jax.evaluation.speed import compile_timed, median_time
from dllm_jax.nn.model import abstract_model
from dllm_jax.nn.transformer import count_params
from dllm_jax.sharding import make_mesh
from dllm_jax.training import TrainState, jit_train_step, make_optimizer, make_train_step

from .sampling import random_params
from .setup import Setup

MFU_FORMULA = (
    "(6 * matmul params + 12 * layers * d_model * seq_len) * tokens/s / matmul peak: PaLM's "
    "count of the FLOPs a step must do (forward + backward of every matmul, the output head "
    "included, the input embedding lookup not; attention's score and value products over the "
    "full L x L, which bidirectional attention computes); norms, softmaxes, the loss and the "
    "optimizer are work outside it"
)

def train_step_time(setup: Setup, cfg, train: TrainConfig, reps: int | None = None, trace_dir: str | None = None):
    """(compile s, median step s, state) of the sharded masked-diffusion train step on random
    tokens, random N(0, 0.02^2) parameters; with ``train.ema_decay`` the EMA is updated too.
    ``trace_dir``: the warm-up runs first, then the timed steps under ``jax.profiler.trace``."""
    batch, seq = train.batch_size, train.seq_len
    mesh = make_mesh(MeshConfig())
    graphdef, params = random_params(cfg, mesh)
    tx = make_optimizer(train, abstract_model(cfg)[1])
    ema = jax.tree.map(jnp.copy, params) if train.ema_decay > 0 else None
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=jax.jit(tx.init)(params), ema=ema)
    step = jit_train_step(make_train_step(make_objective(NoiseConfig(), cfg.num_tokens), graphdef, tx, train),
                          state, mesh)
    tokens = jax.random.randint(jax.random.key(0), (batch, seq), 0, cfg.num_tokens, jnp.int32)
    data = {"tokens": tokens, "loss_mask": jnp.ones((batch, seq), bool), "index": jnp.arange(batch)}
    with jax.set_mesh(mesh):
        compiled, compile_s = compile_timed(step.jitted, state, data, options=setup.compiler_options)
        holder = [state]

        def run():
            holder[0], metrics = compiled(holder[0], data)
            return metrics

        if trace_dir is None:
            step_s, _ = median_time(run, setup.warmup, reps or setup.train_steps, setup.time_budget_s)
        else:
            for _ in range(setup.warmup):
                jax.block_until_ready(run())
            with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
                step_s, _ = median_time(run, 0, reps or setup.train_steps)
    return compile_s, step_s, holder[0]


# ---- training -------------------------------------------------------------------------


def training(setup: Setup) -> list[dict]:
    """Train-step throughput on synthetic tokens, the layer scan (the default; the target's
    row) and the layers unrolled (``ModelConfig.scan_unroll``); ``finalize`` adds the MFU."""
    cfg = setup.train_model
    rows = [_train_row(setup, cfg, "layer scan")]
    if cfg.num_layers > 1:
        rows.append(_train_row(setup, dataclasses.replace(cfg, scan_unroll=cfg.num_layers), "unrolled"))
    return rows


def _train_row(setup: Setup, cfg, variant: str) -> dict:
    batch, seq = setup.train_batch, setup.train_seq
    compile_s, step_s, state = train_step_time(setup, cfg, TrainConfig(batch_size=batch, seq_len=seq, steps=1000,
                                                                       warmup_steps=0))
    n_mm = count_params(state.params) - cfg.vocab_size * cfg.d_model
    flops_per_token = 6.0 * n_mm + 12.0 * cfg.num_layers * cfg.d_model * seq
    tokens_per_s = batch * seq / step_s
    return dict(
        variant=variant,
        model=dataclasses.asdict(cfg),
        params=count_params(state.params),
        matmul_params=n_mm,
        batch=batch,
        seq_len=seq,
        compile_s=compile_s,
        step_s=step_s,
        tokens_per_s=tokens_per_s,
        flops_per_token=flops_per_token,
        formula=MFU_FORMULA,
    )
