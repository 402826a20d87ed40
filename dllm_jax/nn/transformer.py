"""The transformer backbone shared by diffusion models and the AR baseline.

Pre-norm blocks (RMSNorm, rotary attention, SwiGLU), stacked with ``nnx.vmap`` and applied
with ``nnx.scan`` so compile time does not grow with depth. The attention mask kind
(bidirectional / causal / block-causal) is a config field. Optional time conditioning is
DiT-style adaLN-Zero: every block gets (shift, scale, gate) for both sub-layers from t.
Causal models also decode one position at a time against a preallocated KV cache
(``init_cache`` / ``decode_step``); the caller owns the cache and carries it in its scan.
One layer scan serves every pass (``_layers``: a full pass, or a chunk against a cache).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dllm_jax.config import ModelConfig
from dllm_jax.nn.attention import (
    Attention,
    KVCache,
    attention_mask,
    structural_mask,
    two_stream_mask,
)
from dllm_jax.nn.layers import Embed, Linear, RMSNorm, SwiGLU, rotary_tables, timestep_embedding
from dllm_jax.sharding import constrain
from dllm_jax.typing import Times, TokenLogits, Tokens

_LAYERS = {nnx.PARTITION_NAME: "layers"}


def _dtype(config: ModelConfig):
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


def _modulate(x_BLD, shift_BD, scale_BD):
    return x_BLD * (1 + scale_BD[:, None, :]) + shift_BD[:, None, :]


class Block(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        dtype = _dtype(config)
        d = config.d_model
        self.attn_norm = RMSNorm(d, rngs=rngs, eps=config.norm_eps)
        self.attn = Attention(d, config.num_heads, rngs=rngs, dtype=dtype,
                              alibi=config.attention_bias == "alibi", num_kv_heads=config.kv_heads,
                              qkv_bias=config.qkv_bias, causal=config.attention == "causal",
                              implementation=config.attention_impl)
        self.mlp_norm = RMSNorm(d, rngs=rngs, eps=config.norm_eps)
        self.mlp = SwiGLU(d, config.hidden_dim, rngs=rngs, dtype=dtype)
        self.modulation = (
            Linear(config.time_embed_dim, (6, d), ("cond", None, "embed"), rngs=rngs, zero_init=True)
            if config.time_conditioning
            else None
        )

    def __call__(self, x_BLD, mask, positions_BL, sin, cos, cond_BC, cache: KVCache | None = None, start=0):
        """The block on L positions; with this layer's ``cache``: (x_BLD, the cache with them written)."""

        def attend(h_BLD):
            if cache is None:
                return self.attn(h_BLD, mask, positions_BL, sin, cos), None
            return self.attn(h_BLD, mask, positions_BL, sin, cos, cache, start)

        x_BLD, written = self._residual(x_BLD, attend, cond_BC)
        return x_BLD if cache is None else (x_BLD, written)

    def _residual(self, x_BLD, attend, cond_BC):
        """The two pre-norm residual sub-layers; ``attend(h) -> (out, aux)``, aux passed out."""
        if self.modulation is None:
            out_BLD, aux = attend(self.attn_norm(x_BLD))
            x_BLD = x_BLD + out_BLD
            x_BLD = x_BLD + self.mlp(self.mlp_norm(x_BLD))
        else:
            mod_B6D = self.modulation(cond_BC).astype(x_BLD.dtype)
            sh1, sc1, g1, sh2, sc2, g2 = (mod_B6D[:, i] for i in range(6))
            out_BLD, aux = attend(_modulate(self.attn_norm(x_BLD), sh1, sc1))
            x_BLD = x_BLD + g1[:, None, :] * out_BLD
            h = _modulate(self.mlp_norm(x_BLD), sh2, sc2)
            x_BLD = x_BLD + g2[:, None, :] * self.mlp(h)
        return constrain(x_BLD, "batch", "length", "act_embed"), aux


class Transformer(nnx.Module):
    """Token ids (B, L) [+ times (B,)] -> logits (B, L, num_tokens) in float32."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype = _dtype(config)
        self.embed = Embed(config.vocab_size, config.d_model, rngs=rngs, dtype=dtype,
                           init_std=config.embed_init_std)

        @nnx.split_rngs(splits=config.num_layers)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata=_LAYERS)
        def make_blocks(rngs):
            return Block(config, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.final_norm = RMSNorm(config.d_model, rngs=rngs, eps=config.norm_eps)
        self.head = None if config.tie_embeddings else Linear(
            config.d_model, (config.num_tokens,), ("embed", "vocab"), rngs=rngs, dtype=dtype,
            init_scale=config.head_init_scale)
        if config.time_conditioning:
            c = config.time_embed_dim
            self.time_in = Linear(c, (c,), ("cond", None), rngs=rngs)
            self.time_out = Linear(c, (c,), (None, "cond"), rngs=rngs)
            self.final_modulation = Linear(c, (2, config.d_model), ("cond", None, "embed"), rngs=rngs, zero_init=True)

    def __call__(self, tokens_BL: Tokens, t_B: Times | None = None, positions_BL=None,
                 causal_B=None, clean_BL: Tokens | None = None) -> TokenLogits:
        """Logits (B, L, num_tokens); ``causal_B`` (bool, per row) switches rows to a causal mask.

        ``causal_B`` lets one forward pass serve a mixed batch (AR rows beside diffusion rows,
        ``NoiseConfig.ar_fraction``) on a non-causal backbone. For a ``shift`` model a causal
        row's logits at i come from position i - 1, i.e. from tokens < i: the AR factorisation
        for every position but 0.

        ``clean_BL`` (block-causal models): the BD3-LM training forward, ``tokens_BL`` being
        the noisy sequence x_t and ``clean_BL`` the clean x_0 (see ``two_stream``).
        """
        if tokens_BL.ndim != 2:
            raise ValueError(f"tokens must have shape (batch, length), got {tokens_BL.shape}")
        if clean_BL is not None:
            if positions_BL is not None or causal_B is not None:
                raise ValueError("the two-stream forward (clean_BL) takes no positions_BL or causal_B")
            return self.two_stream(tokens_BL, clean_BL, t_B)
        return self.forward_hidden(self.embed(tokens_BL), t_B, positions_BL, causal_B)

    def forward_hidden(self, x_BLD, t_B=None, positions_BL=None, causal_B=None):
        """Run the blocks and the head on embedded inputs (lets tests differentiate w.r.t. them)."""
        config = self.config
        B, L, _ = x_BLD.shape
        self._check_length(L)
        if positions_BL is None:
            positions_BL = jnp.broadcast_to(jnp.arange(L), (B, L))
        # causal / bidirectional: no mask array (the structured causal flag, or none at all)
        mask_LS = None if config.attention != "block_causal" else attention_mask(config.attention, L, L,
                                                                                 config.block_size)
        if causal_B is not None:
            causal_LS = attention_mask("causal", L, L)
            full_LS = attention_mask(config.attention, L, L, config.block_size)
            mask_LS = jnp.where(causal_B[:, None, None, None], causal_LS, full_LS)  # (B, 1, L, S)
        cond_BC = self._condition(t_B, B)
        x_BLD = self._layers(x_BLD, mask_LS, positions_BL, cond_BC)
        return self._aligned(self._logits(x_BLD, cond_BC))

    def two_stream(self, noisy_BL: Tokens, clean_BL: Tokens, t_B: Times | None = None, with_context=False):
        """BD3-LM's training forward: logits (B, L, V) for every noisy position at once.

        One pass over the concatenation [x_t, x_0] (2L positions, both streams at positions
        0..L-1) under ``two_stream_mask``: noisy block b attends to itself and to the clean
        blocks < b, the clean stream is block-causal. Block b's logits are therefore those
        the cached generation forward computes for the same clean prefix and noisy block
        (``forward_chunk`` / ``canvas_chunk`` with the finished blocks in the cache).

        For a ``shift`` model the first token of block b > 0 is predicted at the clean
        position before it (its AR prediction given the clean past), the others at the noisy
        position before them. ``with_context``: also return the clean stream's raw outputs
        (B, L, V); with a causal context, position i's is the AR prediction of token i + 1.
        """
        config = self.config
        if config.attention != "block_causal":
            raise ValueError(f"the two-stream forward is for block-causal models, this one is {config.attention!r}")
        if noisy_BL.shape != clean_BL.shape or noisy_BL.ndim != 2:
            raise ValueError(f"noisy and clean tokens must both be (batch, length), got {noisy_BL.shape} and {clean_BL.shape}")
        B, L = noisy_BL.shape
        self._check_length(L)
        if L % config.block_size:
            raise ValueError(f"the two-stream forward needs whole blocks: length {L} is not a multiple of block_size={config.block_size}")
        x_BTD = self.embed(jnp.concatenate([noisy_BL, clean_BL], axis=1))
        positions_BT = jnp.broadcast_to(jnp.concatenate([jnp.arange(L), jnp.arange(L)]), (B, 2 * L))
        cond_BC = self._condition(t_B, B)
        mask_TT = two_stream_mask(L, config.block_size, causal_context=config.context_attention == "causal")
        x_BTD = self._layers(x_BTD, mask_TT, positions_BT, cond_BC)
        raw_BTV = self._logits(x_BTD, cond_BC)
        noisy_BLV, clean_BLV = raw_BTV[:, :L], raw_BTV[:, L:]
        if config.shift:
            from_noisy = jnp.concatenate([noisy_BLV[:, :1], noisy_BLV[:, :-1]], axis=1)
            from_clean = jnp.concatenate([noisy_BLV[:, :1], clean_BLV[:, :-1]], axis=1)
            block_start_L = (jnp.arange(L) % config.block_size == 0) & (jnp.arange(L) > 0)
            noisy_BLV = jnp.where(block_start_L[None, :, None], from_clean, from_noisy)
        return (noisy_BLV, clean_BLV) if with_context else noisy_BLV

    def _check_length(self, length: int):
        if length > self.config.max_len:
            raise ValueError(f"sequence length {length} exceeds the model's max_len={self.config.max_len}")

    def _layers(self, x_BLD, mask, positions_BL, cond_BC, cache: KVCache | None = None, start=0):
        """The one layer scan: a full pass (no cache), or positions [start, start + L) against
        a KV cache of every layer (N, B, S, H_kv, Dh), returning (x, the cache with them written)."""
        config = self.config
        sin, cos = rotary_tables(config.max_len, config.head_dim, config.rope_theta, rope_scaling(config))
        x_BLD = constrain(x_BLD, "batch", "length", "act_embed")
        if cache is None:
            def body(block, x, mask, pos, s, c, cond):
                return block(x, mask, pos, s, c, cond)

            if config.remat:  # keep nothing: recompute the whole block
                body = nnx.remat(body)
            elif config.layer_saves == "dots":  # keep matmul outputs, recompute the rest
                body = nnx.remat(body, policy=jax.checkpoint_policies.dots_saveable,
                                 prevent_cse=config.scan_unroll == config.num_layers)  # safe off inside a loop

            @nnx.scan(in_axes=(0, nnx.Carry, None, None, None, None, None), out_axes=nnx.Carry,
                      unroll=config.scan_unroll, transform_metadata=_LAYERS)
            def run(block, x, mask, pos, s, c, cond):
                return body(block, x, mask, pos, s, c, cond)

            return run(self.blocks, x_BLD, mask, positions_BL, sin, cos, cond_BC)

        @nnx.scan(in_axes=(0, nnx.Carry, 0, None, None, None, None, None, None), out_axes=(nnx.Carry, 0),
                  transform_metadata=_LAYERS)
        def run_cached(block, x, layer_cache, st, mask, pos, s, c, cond):
            return block(x, mask, pos, s, c, cond, layer_cache, st)

        return run_cached(self.blocks, x_BLD, cache, start, mask, positions_BL, sin, cos, cond_BC)

    def init_cache(self, batch: int, length: int | None = None) -> KVCache:
        """An empty KV cache: k and v of shape (N, B, length, H_kv, K) (H_kv = ``config.kv_heads``), length max_len by default."""
        c = self.config
        length = c.max_len if length is None else length
        if not 1 <= length <= c.max_len:
            raise ValueError(f"cache length must be in [1, max_len={c.max_len}], got {length}")
        shape = (c.num_layers, batch, length, c.kv_heads, c.head_dim)
        return KVCache(jnp.zeros(shape, _dtype(c)), jnp.zeros(shape, _dtype(c)))

    def decode_step(self, tokens_B, position, cache: KVCache):
        """Logits of one new position of a causal model, attending to the cached past.

        Equal (to float rounding) to ``self(inputs_BL)[:, position]`` when the cache holds
        positions ``< position`` of ``inputs_BL`` and ``tokens_B = inputs_BL[:, position]``.
        Shapes are static, so a ``jax.lax.scan`` over positions compiles one step.

        Args:
          tokens_B: input token ids at ``position``, shape (B,).
          position: int32 scalar (may be traced), ``0 <= position < max_len``.
          cache: ``KVCache`` of shape (N, B, max_len, H_kv, K), e.g. from ``init_cache``.

        Returns:
          (logits_BV float32, cache with this position's keys and values written).

        Raises:
          ValueError: if the model is not causal, or is time-conditioned (AR models are not).
        """
        config = self.config
        if config.attention != "causal" or config.time_conditioning:
            raise ValueError(
                "decode_step needs a causal model without time conditioning, got "
                f"attention={config.attention!r}, time_conditioning={config.time_conditioning}"
            )
        logits_B1V, cache = self._raw_chunk(tokens_B[:, None], position, cache, with_cache=True)
        return logits_B1V[:, 0], cache

    def forward_chunk(self, tokens_BC, start, cache: KVCache, kv_valid_BS=None, t_B=None):
        """Logits of the chunk at positions [start, start + C), reading and writing a KV cache.

        The chunk's keys and values (every layer) are written into ``cache`` at its
        positions; its queries attend to every cache position the model's attention kind
        allows (by absolute position) and ``kv_valid_BS`` marks valid. With ``start = 0`` and
        C = S this is the full forward pass with a key-padding mask, and it returns the whole
        sequence's cache. Entries of other positions are used as they are: exact when they
        hold what a full pass would compute there (a block-causal model's finished blocks),
        an approximation otherwise (a bidirectional model's stale prefix and suffix).

        Args:
          tokens_BC: int32 (B, C).
          start: int32 scalar, may be traced; ``start + C <= S``.
          cache: ``KVCache`` with k, v of shape (N, B, S, H_kv, K) (``init_cache(batch, S)``).
          kv_valid_BS: optional bool (B, S): keys that exist (False for padding).
          t_B: times, for a time-conditioned model.

        Returns:
          (logits_BCV float32, the cache with the chunk written).
        """
        B, C = tokens_BC.shape
        S = cache.k.shape[2]
        if self.config.shift and C != S:
            raise ValueError(
                "a shift model predicts token i at position i - 1, so a chunk of the canvas needs "
                f"the position before it: use canvas_chunk (forward_chunk takes whole canvases, "
                f"C = S = {S}, for shift models), got a chunk of {C}"
            )
        logits_BCV, cache = self._raw_chunk(tokens_BC, start, cache, kv_valid_BS, t_B, with_cache=True)
        return self._aligned(logits_BCV), cache

    def write_chunk(self, tokens_BC, start, cache: KVCache, kv_valid_BS=None, t_B=None) -> KVCache:
        """The cache with the chunk at [start, start + C) written (every layer): how a
        finished block enters the exact cache. Works for ``shift`` models too (the written
        keys and values do not depend on how outputs are aligned)."""
        C = tokens_BC.shape[1]
        return self._raw_chunk(tokens_BC, start, cache, kv_valid_BS, t_B, with_cache=True, clean_until=start + C)[1]

    def _raw_chunk(self, tokens_BC, start, cache: KVCache, kv_valid_BS=None, t_B=None, with_cache=False,
                   clean_until=0):
        """The network's outputs at [start, start + C) (not re-aligned for ``shift``).

        Queries at absolute positions < ``clean_until`` are finished (clean) tokens: with
        ``context_attention="causal"`` they attend causally, as the two-stream forward's clean
        stream does; every other query attends by the model's attention kind.
        """
        config = self.config
        B, C = tokens_BC.shape
        S = cache.k.shape[2]
        q_pos_C, k_pos_S = start + jnp.arange(C), jnp.arange(S)
        mask_CS = structural_mask(config.attention, q_pos_C, k_pos_S, config.block_size)
        if config.context_attention == "causal":
            mask_CS = mask_CS & ((q_pos_C[:, None] >= clean_until) | (k_pos_S[None, :] <= q_pos_C[:, None]))
        mask_BCS = jnp.broadcast_to(mask_CS, (B, C, S))
        if kv_valid_BS is not None:
            mask_BCS = mask_BCS & kv_valid_BS[:, None, :]
        cond_BC = self._condition(t_B, B)
        positions_BC = jnp.broadcast_to(start + jnp.arange(C), (B, C))
        x_BCD, cache = self._layers(self.embed(tokens_BC), mask_BCS, positions_BC, cond_BC, cache, start)
        logits = self._logits(x_BCD, cond_BC)
        return (logits, cache) if with_cache else logits

    def canvas_chunk(self, canvas_BS, start, size: int, cache: KVCache, kv_valid_BS=None, t_B=None,
                     return_cache: bool = False, clean_until=None):
        """Logits of positions [start, start + size) of ``canvas_BS``, against ``cache``.

        ``forward_chunk`` of that slice for an ordinary model. A ``shift`` model predicts
        token i at position i - 1, so the chunk is widened by one position: [start - 1,
        start + size) when start > 0, [0, size + 1) for the first chunk (whose token 0 is
        predicted at position 0 itself), and the outputs re-aligned. The extra position's
        keys and values are recomputed like the chunk's.

        Args:
          canvas_BS: the whole canvas (B, S) with the chunk's current tokens in place.
          start: int32 scalar, may be traced.
          size: the chunk length C (static); a shift model needs C < S.
          cache, kv_valid_BS, t_B: as for ``forward_chunk``.
          return_cache: also return the cache with the chunk's keys and values written.
          clean_until: positions before it are finished blocks (default ``start``: the chunk
            is being denoised), for ``context_attention="causal"``.

        Returns:
          logits (B, C, V) float32 (and the cache, with ``return_cache``).
        """
        S = canvas_BS.shape[1]
        clean_until = start if clean_until is None else clean_until
        if not self.config.shift or size == S:
            chunk_BC = jax.lax.dynamic_slice_in_dim(canvas_BS, start, size, axis=1)
            raw_BCV, cache = self._raw_chunk(chunk_BC, start, cache, kv_valid_BS, t_B, with_cache=True,
                                             clean_until=clean_until)
            logits_BCV = self._aligned(raw_BCV) if self.config.shift else raw_BCV
            return (logits_BCV, cache) if return_cache else logits_BCV
        wide = jnp.maximum(start - 1, 0)
        ext_BE = jax.lax.dynamic_slice_in_dim(canvas_BS, wide, size + 1, axis=1)
        raw_BEV, cache = self._raw_chunk(ext_BE, wide, cache, kv_valid_BS, t_B, with_cache=True,
                                         clean_until=clean_until)
        first_BCV = jnp.concatenate([raw_BEV[:, :1], raw_BEV[:, : size - 1]], axis=1)
        logits_BCV = jnp.where(start == 0, first_BCV, raw_BEV[:, :size])
        return (logits_BCV, cache) if return_cache else logits_BCV

    def _aligned(self, logits_BLV):
        """Re-align a shift model's outputs: position i's logits predict token i + 1."""
        if not self.config.shift:
            return logits_BLV
        return jnp.concatenate([logits_BLV[:, :1], logits_BLV[:, :-1]], axis=1)

    def _logits(self, x_BLD, cond_BC):
        h_BLD = self.final_norm(x_BLD)
        if cond_BC is not None:
            mod = self.final_modulation(cond_BC).astype(h_BLD.dtype)
            h_BLD = _modulate(h_BLD, mod[:, 0], mod[:, 1])
        if self.head is None:  # tied: the embedding's ordinary rows, transposed
            logits_BLV = self.embed.attend(h_BLD, self.config.num_tokens).astype(jnp.float32)
        else:
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


def rope_scaling(config: ModelConfig) -> tuple:
    """The ``scaling`` argument of ``rotary_tables`` for ``config``."""
    if config.rope_scaling == "linear":
        return ("linear", config.rope_factor)
    if config.rope_scaling == "llama3":
        return ("llama3", config.rope_factor, config.rope_low_freq_factor, config.rope_high_freq_factor,
                config.rope_original_max_len)
    return ("none",)


def count_params(state) -> int:
    """Number of scalars in a parameter state."""
    return sum(x.size for x in jax.tree.leaves(state))
