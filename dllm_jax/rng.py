"""Randomness keyed by (seed, global example index): the same on any batch split or mesh."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def example_keys(seed, index_B):
    """One key per example: ``fold_in(key(seed), i)`` for each global example index i.

    ``seed``: an integer seed, or a JAX key used as is (e.g. a step's key in training).
    """
    is_key = hasattr(seed, "dtype") and jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key)
    base = seed if is_key else jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(index_B, jnp.uint32))
