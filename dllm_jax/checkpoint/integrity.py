"""Integrity of checkpoints: per-leaf fingerprints (independent of the sharding) and the
check that a restore target matches what was saved."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# --- fingerprints: a positional hash of every array leaf, independent of the sharding ----


def _fmix32(h):
    """MurmurHash3's 32-bit finaliser (uint32 arithmetic wraps)."""
    h = h ^ (h >> 16)
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _bits(dtype) -> int:
    dtype = jnp.dtype(dtype)
    if dtype == jnp.bool_:
        return 8
    if jnp.issubdtype(dtype, jnp.integer):
        return jnp.iinfo(dtype).bits
    if jnp.issubdtype(dtype, jnp.inexact):
        return jnp.finfo(dtype).bits
    return 0


def _hashable(x) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic) and _bits(x.dtype) in (8, 16, 32, 64)


def leaf_hash(x):
    """Sum over elements of fmix32(bits ^ f(flat index)): exact in uint32, so the same on
    any mesh, and a moved, truncated or flipped element changes it."""
    if jnp.iscomplexobj(x):
        x = jnp.stack([x.real, x.imag], axis=-1)
    if x.dtype == jnp.bool_:
        u = x.astype(jnp.uint32)
    elif x.dtype.itemsize < 4:
        u = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}"))
        u = u.astype(jnp.uint32)
    else:
        u = jax.lax.bitcast_convert_type(x, jnp.uint32)  # 64-bit: a trailing axis of 2
    index, stride = jnp.zeros(u.shape, jnp.uint32), 1
    for axis in reversed(range(u.ndim)):
        iota = jax.lax.broadcasted_iota(jnp.uint32, u.shape, axis)
        index = index + iota * np.uint32(stride % 2**32)
        stride *= u.shape[axis]
    h = _fmix32(u ^ (index * np.uint32(0x9E3779B9) + np.uint32(0x7F4A7C15)))
    return jnp.sum(h, dtype=jnp.uint32)


def _host_u32(x):
    """Host arrays of 8/16-byte elements as uint32 words (what the device path would see;
    with x64 disabled ``jnp.asarray`` would otherwise truncate them)."""
    if isinstance(x, np.ndarray | np.generic) and x.dtype.itemsize > 4:
        x = np.ascontiguousarray(x)
        return x.view(np.uint32).reshape(*x.shape, x.dtype.itemsize // 4)
    return x


@jax.jit
def _leaf_hashes(leaves):
    return [leaf_hash(jnp.asarray(x)) for x in leaves]


def describe(tree) -> dict[str, dict]:
    """{leaf path: {shape, dtype, hash}} for every leaf (hash None where not hashable)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    keyed = {jax.tree_util.keystr(path): leaf for path, leaf in flat}
    hashable = {k: _host_u32(v) for k, v in keyed.items() if _hashable(v)}
    hashes = jax.device_get(_leaf_hashes(list(hashable.values())))
    hashes = dict(zip(hashable, hashes, strict=True))
    out = {}
    for key, leaf in keyed.items():
        shape = list(np.shape(leaf))
        dtype = str(leaf.dtype) if hasattr(leaf, "dtype") else type(leaf).__name__
        h = int(hashes[key]) if key in hashes else None
        out[key] = {"shape": shape, "dtype": dtype, "hash": h}
    return out


def abstract_leaf(x):
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x


def check_target(step: int, abstract, saved: dict[str, dict]):
    flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
    want = {jax.tree_util.keystr(p): list(np.shape(x)) for p, x in flat}
    missing, extra = sorted(set(saved) - set(want)), sorted(set(want) - set(saved))
    if missing or extra:
        raise ValueError(
            f"target does not match checkpoint step {step}: leaves only in the checkpoint "
            f"{missing[:5]}, only in the target {extra[:5]}"
        )
    shapes = [
        f"{k}: saved {saved[k]['shape']}, target {s}"
        for k, s in want.items()
        if saved[k]["shape"] != s
    ]
    if shapes:
        raise ValueError(f"target shapes differ from checkpoint step {step}: {shapes[:5]}")
