"""Experiments: one function per experiment, each returning an ``ExperimentConfig``.

Every field can be overridden from the command line: ``--set train.steps=100 model.d_model=64``.
"""

from __future__ import annotations

import dataclasses

from dllm_jax.config import (
    DataConfig,
    ExperimentConfig,
    LoopConfig,
    ModelConfig,
    NoiseConfig,
    TrainConfig,
)


def quickstart(process: str = "masked") -> ExperimentConfig:
    """CPU, minutes: the embedded stdlib-docs corpus, a ~1.5M-parameter model."""
    vocab = 2048
    return ExperimentConfig(
        name=f"quickstart-{process}",
        model=ModelConfig(num_tokens=vocab, max_len=128, d_model=128, num_layers=4, num_heads=4,
                          mlp_dim=384, attention="causal" if process == "ar" else "bidirectional"),
        noise=NoiseConfig(process=process),
        train=TrainConfig(batch_size=32, seq_len=128, steps=300, lr=2e-3, warmup_steps=30, seed=0),
        data=DataConfig(source="embedded", vocab_size=vocab),
        loop=LoopConfig(log_every=25, eval_every=300, eval_batches=4, eval_time_points=8,
                        checkpoint_every=300, sample_steps=(8, 32, 128), num_samples=2, sample_length=64),
    )


def lm1b(process: str = "masked") -> ExperimentConfig:
    """LM1B-style small model (MDLM's 'small' scale) for a TPU/GPU host with TFDS data."""
    vocab = 32_768
    return ExperimentConfig(
        name=f"lm1b-{process}",
        model=ModelConfig(num_tokens=vocab, max_len=128, d_model=768, num_layers=12, num_heads=12,
                          mlp_dim=3072, dtype="bfloat16", vocab_multiple=128,
                          attention="causal" if process == "ar" else "bidirectional"),
        noise=NoiseConfig(process=process),
        train=TrainConfig(batch_size=512, seq_len=128, steps=1_000_000, lr=3e-4, warmup_steps=2500,
                          ema_decay=0.9999),
        data=DataConfig(source="tfds:lm1b", vocab_size=vocab),
        loop=LoopConfig(log_every=100, eval_every=10_000, eval_batches=32, checkpoint_every=10_000,
                        keep_checkpoints=3, sample_steps=(32, 128, 1024), num_samples=4, sample_length=128),
    )


def owt(process: str = "masked") -> ExperimentConfig:
    """GPT-2-small scale, OpenWebText-style (point data.source at your text or a TFDS set)."""
    vocab = 50_304
    return ExperimentConfig(
        name=f"owt-{process}",
        model=ModelConfig(num_tokens=vocab, max_len=1024, d_model=768, num_layers=12, num_heads=12,
                          mlp_dim=3072, dtype="bfloat16", vocab_multiple=128, remat=True,
                          attention="causal" if process == "ar" else "bidirectional"),
        noise=NoiseConfig(process=process),
        train=TrainConfig(batch_size=512, seq_len=1024, steps=1_000_000, lr=3e-4, warmup_steps=2500,
                          ema_decay=0.9999),
        data=DataConfig(source="tfds:c4/en", vocab_size=vocab),
        loop=LoopConfig(log_every=100, eval_every=10_000, eval_batches=16, checkpoint_every=10_000,
                        keep_checkpoints=3, sample_steps=(64, 256, 1024), num_samples=4, sample_length=1024),
    )


EXPERIMENTS = {"quickstart": quickstart, "lm1b": lm1b, "owt": owt}


def get(name: str, process: str = "masked") -> ExperimentConfig:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; expected one of {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name](process)


def shrink(exp: ExperimentConfig) -> ExperimentConfig:
    """The same experiment at test size (tiny widths, one step), for CI."""
    vocab = exp.model.num_tokens
    return dataclasses.replace(
        exp,
        model=dataclasses.replace(exp.model, d_model=32, num_layers=2, num_heads=2, mlp_dim=64,
                                  max_len=min(exp.model.max_len, 32), time_embed_dim=16),
        train=dataclasses.replace(exp.train, batch_size=4, seq_len=min(exp.train.seq_len, 32), steps=1,
                                  warmup_steps=0),
        loop=dataclasses.replace(exp.loop, eval_batches=1, eval_time_points=2, sample_steps=(2,),
                                 num_samples=1, sample_length=8, eval_every=1, checkpoint_every=1),
        data=dataclasses.replace(exp.data, vocab_size=vocab),
    )
