"""Multi-head attention whose mask kind is a parameter: bidirectional, causal, block-causal."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dllm_jax.nn.layers import Linear, apply_rotary, matmul_2d, param
from dllm_jax.sharding import constrain


def attention_mask(kind: str, q_len: int, kv_len: int | None = None, block_size: int = 1):
    """Boolean (q_len, kv_len) mask, True where query i may attend to key j.

    Queries are the *last* ``q_len`` positions of the ``kv_len`` keys (so a query block can
    attend to a cached prefix). ``block_causal``: j's block <= i's block (BD3-LM).
    """
    kv_len = q_len if kv_len is None else kv_len
    qi = np.arange(kv_len - q_len, kv_len)[:, None]
    kj = np.arange(kv_len)[None, :]
    if kind == "bidirectional":
        mask = np.ones((q_len, kv_len), bool)
    elif kind == "causal":
        mask = kj <= qi
    elif kind == "block_causal":
        mask = (kj // block_size) <= (qi // block_size)
    else:
        raise ValueError(
            f"unknown attention kind {kind!r}; expected bidirectional, causal or block_causal"
        )
    return jnp.asarray(mask)


def two_stream_mask(length: int, block_size: int, causal_context: bool = False):
    """BD3-LM's (2L, 2L) mask over the concatenation [x_t, x_0] (noisy stream first).

    Noisy block b attends to itself (bidirectionally) and to the clean blocks < b; clean
    positions attend block-causally among themselves and never to the noisy stream. Block
    b's noisy queries thus see exactly what the cached generation forward shows them: the
    finished (clean) earlier blocks and the block being denoised. ``causal_context``: the
    clean stream is causal instead (Fast-dLLM v2: an AR model's context stays AR).
    """
    blk = np.arange(length) // block_size
    qb, kb = blk[:, None], blk[None, :]
    noisy_noisy = qb == kb
    noisy_clean = kb < qb
    pos = np.arange(length)
    clean_clean = pos[None, :] <= pos[:, None] if causal_context else kb <= qb
    top = np.concatenate([noisy_noisy, noisy_clean], axis=1)
    bottom = np.concatenate([np.zeros((length, length), bool), clean_clean], axis=1)
    return jnp.asarray(np.concatenate([top, bottom], axis=0))


class KVCache(NamedTuple):
    """Keys and values of the positions decoded so far, preallocated at the model's max_len.

    Shapes (B, S, H, K) inside one layer; the model's cache stacks layers in front,
    (N, B, S, H, K). Entries at positions not yet decoded are ignored (masked).
    """

    k: jax.Array
    v: jax.Array


class Attention(nnx.Module):
    """Multi-head self-attention with rotary positions; softmax in float32.

    ``num_kv_heads`` < ``num_heads``: grouped-query attention, query head h reading key/value
    head ``h // (num_heads / num_kv_heads)`` (as Hugging Face's ``repeat_kv``). ``qkv_bias``:
    biases on the three input projections (Qwen2).
    """

    def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 alibi: bool = False, num_kv_heads: int | None = None, qkv_bias: bool = False,
                 causal: bool = False, implementation: str = "xla"):
        head_dim = d_model // num_heads
        kv_heads = num_kv_heads or num_heads
        self.alibi = alibi
        self.causal = causal  # a full pass given no mask attends causally (the structured mask)
        self.implementation = implementation
        self.num_heads = num_heads
        q_axes, kv_axes = ("embed", "heads", "head_dim"), ("embed", "kv_heads", "head_dim")
        self.q = Linear(d_model, (num_heads, head_dim), q_axes, rngs=rngs, dtype=dtype, bias=qkv_bias)
        self.k = Linear(d_model, (kv_heads, head_dim), kv_axes, rngs=rngs, dtype=dtype, bias=qkv_bias)
        self.v = Linear(d_model, (kv_heads, head_dim), kv_axes, rngs=rngs, dtype=dtype, bias=qkv_bias)
        self.o = _OutProj(num_heads, head_dim, d_model, rngs=rngs, dtype=dtype)
        self.dtype = dtype

    def __call__(self, x_BLD, mask, positions_BL, sin, cos, cache: KVCache | None = None, start=0):
        """Self-attention of the L positions of ``x_BLD``; with a ``cache``, against it.

        Without a cache, keys and values are the positions' own, under ``mask`` ((L, L), or
        (B, 1, L, L) per row; None: the model's own kind, causal or every position). With this layer's ``cache`` (B, S, H, Dh), the positions'
        keys and values are written at [start, start + L) first and the queries attend to
        the whole cache under ``mask`` ((B, L, S): the caller's structural mask and key
        validity). Returns out_BLD, or (out_BLD, the cache with the positions written).
        """
        q_BLHDh = apply_rotary(self.q(x_BLD), positions_BL, sin, cos)
        k_BLHDh = apply_rotary(self.k(x_BLD), positions_BL, sin, cos)
        v_BLHDh = self.v(x_BLD)
        q_BLHDh = constrain(q_BLHDh, "batch", "length", "act_heads", None)
        if cache is None:
            out_BLHDh = attend(q_BLHDh, k_BLHDh, v_BLHDh, mask, self._bias(positions_BL, positions_BL),
                               is_causal=self.causal and mask is None, implementation=self.implementation)
            return self.o(out_BLHDh)
        at = (0, start, 0, 0)
        k_BSHDh = jax.lax.dynamic_update_slice(cache.k, k_BLHDh.astype(cache.k.dtype), at)
        v_BSHDh = jax.lax.dynamic_update_slice(cache.v, v_BLHDh.astype(cache.v.dtype), at)
        k_pos_BS = jnp.broadcast_to(jnp.arange(k_BSHDh.shape[1]), k_BSHDh.shape[:2])
        out_BLHDh = attend(q_BLHDh, k_BSHDh, v_BSHDh, mask[:, None], self._bias(positions_BL, k_pos_BS),
                           implementation=self.implementation)
        return self.o(out_BLHDh), KVCache(k_BSHDh, v_BSHDh)

    def _bias(self, q_pos_BL, k_pos_BS):
        """ALiBi's distance penalty -m_h |i - j| (B, H, L, S), or None when off."""
        if not self.alibi:
            return None
        return alibi_bias(self.num_heads, q_pos_BL, k_pos_BS)


def structural_mask(kind: str, q_pos_L, kv_pos_S, block_size: int = 1):
    """Boolean (L, S) mask from absolute query and key positions (traced positions allowed)."""
    qi, kj = q_pos_L[:, None], kv_pos_S[None, :]
    if kind == "bidirectional":
        return jnp.ones((q_pos_L.shape[0], kv_pos_S.shape[0]), bool)
    if kind == "causal":
        return kj <= qi
    if kind == "block_causal":
        return (kj // block_size) <= (qi // block_size)
    raise ValueError(f"unknown attention kind {kind!r}; expected bidirectional, causal or block_causal")


def alibi_slopes(num_heads: int) -> np.ndarray:
    """ALiBi's per-head slopes m_h = 2^(-8 (h + 1) / H) (Press et al. 2022)."""
    return 2.0 ** (-8.0 * np.arange(1, num_heads + 1) / num_heads)


def alibi_bias(num_heads: int, q_pos_BL, k_pos_BS):
    """-m_h |i - j| for query positions i and key positions j: (B, H, L, S), float32.

    Symmetric in i - j, so a bidirectional model starts with local attention in every head
    (a diffusion model's masked positions see their neighbours from the first step).
    """
    dist_BLS = jnp.abs(q_pos_BL[:, :, None] - k_pos_BS[:, None, :]).astype(jnp.float32)
    return -jnp.asarray(alibi_slopes(num_heads), jnp.float32)[None, :, None, None] * dist_BLS[:, None]


def attend(q_BLHDh, k_BSGDh, v_BSGDh, mask_LS=None, bias_BHLS=None, *, is_causal: bool = False,
           implementation: str = "xla"):
    """Scaled dot-product attention through ``jax.nn.dot_product_attention``: logits and
    softmax in float32, a boolean mask ((L, S), or (B, 1, L, S) per row; None = every key),
    ``is_causal`` the structured causal mask (no (L, S) array: what fused kernels take), an
    optional additive bias. Keys and values may have fewer heads G than the H queries
    (grouped-query attention: G divides H, query head h reads kv head h // (H/G)).
    ``implementation``: ``xla`` (CPU, TPU, any GPU) or ``cudnn`` (NVIDIA's fused kernel:
    bf16/fp16, GPU only). Equal to ``attend_reference``."""
    mask = None if mask_LS is None else jnp.asarray(mask_LS)
    if mask is not None and mask.ndim < 4:
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    return jax.nn.dot_product_attention(q_BLHDh, k_BSGDh, v_BSGDh, bias=bias_BHLS, mask=mask, is_causal=is_causal,
                                        implementation=implementation)


def attend_reference(q_BLHDh, k_BSGDh, v_BSGDh, mask_LS=None, bias_BHLS=None, *, is_causal: bool = False,
                     implementation: str = "xla"):
    """The plain einsum-softmax attention ``attend`` must equal (the tests' reference;
    ``implementation`` is ignored)."""
    B, L, H, Dh = q_BLHDh.shape
    S, G = k_BSGDh.shape[1], k_BSGDh.shape[2]
    q_BLGRDh = q_BLHDh.reshape(B, L, G, H // G, Dh)
    logits = jnp.einsum("blgrk,bsgk->bgrls", q_BLGRDh, k_BSGDh, preferred_element_type=jnp.float32)
    logits_BHLS = logits.reshape(B, H, L, S) * Dh ** -0.5
    if bias_BHLS is not None:
        logits_BHLS = logits_BHLS + bias_BHLS
    if is_causal:
        mask_LS = attention_mask("causal", L, S)
    if mask_LS is not None:
        logits_BHLS = jnp.where(mask_LS, logits_BHLS, jnp.finfo(jnp.float32).min)
    probs_BHLS = jax.nn.softmax(logits_BHLS, axis=-1).astype(v_BSGDh.dtype)
    probs_BGRLS = probs_BHLS.reshape(B, G, H // G, L, S)
    return jnp.einsum("bgrls,bsgk->blgrk", probs_BGRLS, v_BSGDh).reshape(B, L, H, Dh)


class _OutProj(nnx.Module):
    def __init__(self, num_heads, head_dim, d_model, *, rngs, dtype):
        init = nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
        self.kernel = param(
            rngs, init, (num_heads, head_dim, d_model),
            ("heads", "head_dim", "embed"),
        )
        self.dtype = dtype

    def __call__(self, x_BLHDh):
        B, L, H, K = x_BLHDh.shape
        w_HKD = self.kernel[...].astype(self.dtype)
        return matmul_2d(x_BLHDh.astype(self.dtype).reshape(B, L, H * K), w_HKD.reshape(H * K, -1))
