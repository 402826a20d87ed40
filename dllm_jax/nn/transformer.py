"""The transformer backbone shared by diffusion models and the AR baseline.

Pre-norm blocks (RMSNorm, rotary attention, SwiGLU), stacked with ``nnx.vmap`` and applied
with ``nnx.scan`` so compile time does not grow with depth. The attention mask kind
(bidirectional / causal / block-causal) is a config field. Optional time conditioning is
DiT-style adaLN-Zero: every block gets (shift, scale, gate) for both sub-layers from t.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dllm_jax.config import ModelConfig
from dllm_jax.nn.attention import Attention, attention_mask
from dllm_jax.nn.layers import Embed, Linear, RMSNorm, SwiGLU, rotary_tables, timestep_embedding
from dllm_jax.sharding import constrain

_LAYERS = {nnx.PARTITION_NAME: "layers"}


def _dtype(config: ModelConfig):
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


def _modulate(x_BLD, shift_BD, scale_BD):
    return x_BLD * (1 + scale_BD[:, None, :]) + shift_BD[:, None, :]


class Block(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        dtype = _dtype(config)
        d = config.d_model
        self.attn_norm = RMSNorm(d, rngs=rngs)
        self.attn = Attention(d, config.num_heads, rngs=rngs, dtype=dtype)
        self.mlp_norm = RMSNorm(d, rngs=rngs)
        self.mlp = SwiGLU(d, config.hidden_dim, rngs=rngs, dtype=dtype)
        self.modulation = (
            Linear(config.time_embed_dim, (6, d), ("cond", None, "embed"), rngs=rngs, zero_init=True)
            if config.time_conditioning
            else None
        )

    def __call__(self, x_BLD, mask_LS, positions_BL, sin, cos, cond_BC):
        if self.modulation is None:
            x_BLD = x_BLD + self.attn(self.attn_norm(x_BLD), mask_LS, positions_BL, sin, cos)
            x_BLD = x_BLD + self.mlp(self.mlp_norm(x_BLD))
        else:
            mod_B6D = self.modulation(cond_BC).astype(x_BLD.dtype)
            sh1, sc1, g1, sh2, sc2, g2 = (mod_B6D[:, i] for i in range(6))
            h = _modulate(self.attn_norm(x_BLD), sh1, sc1)
            x_BLD = x_BLD + g1[:, None, :] * self.attn(h, mask_LS, positions_BL, sin, cos)
            h = _modulate(self.mlp_norm(x_BLD), sh2, sc2)
            x_BLD = x_BLD + g2[:, None, :] * self.mlp(h)
        return constrain(x_BLD, "batch", "length", "act_embed")


class Transformer(nnx.Module):
    """Token ids (B, L) [+ times (B,)] -> logits (B, L, num_tokens) in float32."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype = _dtype(config)
        self.embed = Embed(config.vocab_size, config.d_model, rngs=rngs, dtype=dtype)

        @nnx.split_rngs(splits=config.num_layers)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata=_LAYERS)
        def make_blocks(rngs):
            return Block(config, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.final_norm = RMSNorm(config.d_model, rngs=rngs)
        self.head = Linear(config.d_model, (config.num_tokens,), ("embed", "vocab"), rngs=rngs, dtype=dtype)
        if config.time_conditioning:
            c = config.time_embed_dim
            self.time_in = Linear(c, (c,), ("cond", None), rngs=rngs)
            self.time_out = Linear(c, (c,), (None, "cond"), rngs=rngs)
            self.final_modulation = Linear(c, (2, config.d_model), ("cond", None, "embed"), rngs=rngs, zero_init=True)

    def __call__(self, tokens_BL, t_B=None, positions_BL=None):
        if tokens_BL.ndim != 2:
            raise ValueError(f"tokens must have shape (batch, length), got {tokens_BL.shape}")
        return self.forward_hidden(self.embed(tokens_BL), t_B, positions_BL)

    def forward_hidden(self, x_BLD, t_B=None, positions_BL=None):
        """Run the blocks and the head on embedded inputs (lets tests differentiate w.r.t. them)."""
        config = self.config
        B, L, _ = x_BLD.shape
        if L > config.max_len:
            raise ValueError(f"sequence length {L} exceeds the model's max_len={config.max_len}")
        if positions_BL is None:
            positions_BL = jnp.broadcast_to(jnp.arange(L), (B, L))
        sin, cos = rotary_tables(config.max_len, config.head_dim, config.rope_theta)
        mask_LS = attention_mask(config.attention, L, L, config.block_size)
        cond_BC = self._condition(t_B, B)
        x_BLD = constrain(x_BLD, "batch", "length", "act_embed")

        def body(block, x, mask, pos, s, c, cond):
            return block(x, mask, pos, s, c, cond)

        if config.remat:
            body = nnx.remat(body)

        @nnx.scan(in_axes=(0, nnx.Carry, None, None, None, None, None), out_axes=nnx.Carry, transform_metadata=_LAYERS)
        def run(block, x, mask, pos, s, c, cond):
            return body(block, x, mask, pos, s, c, cond)

        x_BLD = run(self.blocks, x_BLD, mask_LS, positions_BL, sin, cos, cond_BC)
        h_BLD = self.final_norm(x_BLD)
        if cond_BC is not None:
            mod = self.final_modulation(cond_BC).astype(h_BLD.dtype)
            h_BLD = _modulate(h_BLD, mod[:, 0], mod[:, 1])
        logits_BLV = self.head(h_BLD).astype(jnp.float32)
        return constrain(logits_BLV, "batch", "length", "act_vocab")

    def _condition(self, t_B, batch: int):
        if not self.config.time_conditioning:
            return None
        if t_B is None:
            raise ValueError("this model is time-conditioned: pass t_B, the times of shape (batch,)")
        t_B = jnp.broadcast_to(jnp.asarray(t_B, jnp.float32), (batch,))
        emb = timestep_embedding(t_B, self.config.time_embed_dim)
        return self.time_out(jax.nn.silu(self.time_in(emb)))


def count_params(state) -> int:
    """Number of scalars in a parameter state."""
    return sum(x.size for x in jax.tree.leaves(state))
