"""AdamW with linear warmup + cosine decay and global-norm clipping."""

from __future__ import annotations

import jax
import optax
from flax import nnx

from dllm_jax.config import TrainConfig
from dllm_jax.sharding import logical_axes


def learning_rate(config: TrainConfig) -> optax.Schedule:
    decay_steps = max(config.steps, config.warmup_steps + 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.lr,
        warmup_steps=config.warmup_steps,
        decay_steps=decay_steps,
        end_value=config.lr * config.min_lr_ratio,
    )


def weight_decay_mask(abstract_params):
    """True for matrices; False for norm scales (logical axis 'norm'), which are not decayed."""
    return jax.tree.map(
        lambda v: v.replace("norm" not in logical_axes(v)),
        abstract_params,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def make_optimizer(config: TrainConfig, abstract_params) -> optax.GradientTransformation:
    clip = optax.clip_by_global_norm(config.grad_clip) if config.grad_clip > 0 else optax.identity()
    return optax.chain(
        clip,
        optax.adamw(
            learning_rate(config),
            b1=config.b1,
            b2=config.b2,
            weight_decay=config.weight_decay,
            mask=weight_decay_mask(abstract_params),
        ),
    )
