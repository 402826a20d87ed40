"""Small Flax NNX layers: parameters in float32, annotated with logical axis names."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dllm_jax.sharding import constrain


def param(rngs: nnx.Rngs, init, shape: Sequence[int], axes: Sequence[str | None]) -> nnx.Param:
    """A float32 ``nnx.Param`` carrying its logical axes (sharded later, at birth by jit)."""
    if len(axes) != len(shape):
        raise ValueError(f"{len(axes)} logical axes {axes} for a parameter of shape {shape}")
    value = init(rngs.params(), tuple(shape), jnp.float32)
    return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


class Linear(nnx.Module):
    """y = x @ W (+ b with ``bias``), W of shape ``in_shape + out_shape``; computes in ``dtype``."""

    def __init__(
        self,
        in_features: int,
        out_shape: Sequence[int],
        axes: Sequence[str | None],
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        zero_init: bool = False,
        init_scale: float = 1.0,
        bias: bool = False,
    ):
        out_axes = tuple(range(1, 1 + len(out_shape)))
        init = (
            nnx.initializers.zeros
            if zero_init or init_scale == 0
            else nnx.initializers.variance_scaling(init_scale**2, "fan_in", "truncated_normal",
                                                   in_axis=0, out_axis=out_axes)
        )
        self.kernel = param(rngs, init, (in_features, *out_shape), axes)
        self.bias = param(rngs, nnx.initializers.zeros, tuple(out_shape), tuple(axes[1:])) if bias else None
        self.dtype = dtype

    def __call__(self, x):
        w = self.kernel[...].astype(self.dtype)
        w2 = w.reshape(w.shape[0], -1)
        y = matmul_2d(x.astype(self.dtype), w2).reshape(*x.shape[:-1], *w.shape[1:])
        return y if self.bias is None else y + self.bias[...].astype(self.dtype)


def matmul_2d(x, w_IO):
    """x (..., I) @ w (I, O) with the leading axes flattened into one: a 2-D dot.

    The same product as ``jnp.dot(x, w)``, but its weight gradient is then a plain 2-D
    contraction over the tokens. With several leading axes (B, L), XLA:CPU lowers that
    gradient to a dot needing a transposed copy of the activation gradient, which costs as
    much as the matmul itself (a d_model-512 SwiGLU layer's backward ran at 101 vs 164
    GFLOP/s; benchmarks/train_step).
    """
    lead = x.shape[:-1]
    return jnp.dot(x.reshape(-1, x.shape[-1]), w_IO).reshape(*lead, w_IO.shape[-1])


class RMSNorm(nnx.Module):
    """RMS normalisation in float32 with a learned scale (initialised to one)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, eps: float = 1e-6):
        self.scale = param(rngs, nnx.initializers.ones, (dim,), ("norm",))
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...]).astype(x.dtype)


class SwiGLU(nnx.Module):
    """SwiGLU MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, d_model: int, hidden: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.gate = Linear(d_model, (hidden,), ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.up = Linear(d_model, (hidden,), ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.down = Linear(hidden, (d_model,), ("mlp", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x_BLD):
        h_BLF = jax.nn.silu(self.gate(x_BLD)) * self.up(x_BLD)
        h_BLF = constrain(h_BLF, "batch", "length", "act_mlp")
        return self.down(h_BLF)


class Embed(nnx.Module):
    """Token embedding table of shape (vocab_size, d_model)."""

    def __init__(self, vocab_size: int, d_model: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 init_std: float = 1.0):
        init = nnx.initializers.normal(stddev=init_std)
        self.table = param(rngs, init, (vocab_size, d_model), ("vocab", "embed"))
        self.dtype = dtype

    def __call__(self, tokens_BL):
        return jnp.take(self.table[...], tokens_BL, axis=0).astype(self.dtype)

    def attend(self, h_BLD, num_rows: int):
        """Tied output projection: h @ table[:num_rows].T, logits (B, L, num_rows)."""
        w_VD = self.table[:num_rows].astype(self.dtype)
        return matmul_2d(h_BLD.astype(self.dtype), w_VD.T)


def rotary_tables(max_len: int, head_dim: int, theta: float, scaling: tuple = ("none",)):
    """(sin, cos) tables of shape (max_len, head_dim // 2), float32.

    ``scaling``: ``("none",)``, ``("linear", factor)`` or ``("llama3", factor, low_freq_factor,
    high_freq_factor, original_max_len)`` — the inverse frequencies of Hugging Face's
    ``rope_type`` of the same name (Llama 3.1's wavelength-dependent interpolation).
    """
    inv = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    kind = scaling[0]
    if kind == "linear":
        inv = inv / scaling[1]
    elif kind == "llama3":
        factor, low, high, old_len = scaling[1:]
        wavelen = 2 * jnp.pi / inv
        scaled = jnp.where(wavelen > old_len / low, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv = jnp.where(medium, smoothed, scaled)
    elif kind != "none":
        raise ValueError(f"unknown rope scaling {kind!r}; expected none, linear or llama3")
    angles_LK = jnp.arange(max_len, dtype=jnp.float32)[:, None] * inv[None, :]
    return jnp.sin(angles_LK), jnp.cos(angles_LK)


def apply_rotary(x_BLHDh, positions_BL, sin_PK, cos_PK):
    """Rotate pairs (first half, second half) of the head dim by position (RoPE)."""
    sin = sin_PK[positions_BL][:, :, None, :]
    cos = cos_PK[positions_BL][:, :, None, :]
    x32 = x_BLHDh.astype(jnp.float32)
    a, b = jnp.split(x32, 2, axis=-1)
    out = jnp.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
    return out.astype(x_BLHDh.dtype)


def timestep_embedding(t_B, dim: int, max_period: float = 10_000.0):
    """Sinusoidal features of t in [0, 1] (scaled by 1000 as in DiT), shape (B, dim)."""
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = (1000.0 * t_B.astype(jnp.float32))[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
