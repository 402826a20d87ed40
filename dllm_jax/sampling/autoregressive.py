"""AR sampling by re-running the causal model on the whole canvas at every position.

This is the slow, obviously-correct reference (O(L^2) work); KV-cache decoding must return
the same tokens with the same keys. Position i is drawn with ``fold_in(example_key, i)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def ar_sample_reference(logits_fn, keys_B, length: int, bos_id: int, temperature: float = 1.0):
    """Sample ``length`` tokens left to right.

    Args:
      logits_fn: (tokens_BL) -> logits_BLV of a causal model; the input at position i is
        the token sampled at i - 1 (``bos_id`` at position 0).
      keys_B: one key per example.

    Returns:
      tokens (B, length) int32.
    """
    batch = keys_B.shape[0]
    canvas = jnp.full((batch, length), bos_id, jnp.int32)

    def body(inputs_BL, i):
        logits_BV = logits_fn(inputs_BL)[:, i]
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys_B, i)
        tok_B = jax.vmap(lambda k, lg: jax.random.categorical(k, lg / temperature))(step_keys, logits_BV)
        nxt = jnp.minimum(i + 1, length - 1)
        inputs_BL = jnp.where((jnp.arange(length) == nxt)[None] & (i + 1 < length), tok_B[:, None], inputs_BL)
        return inputs_BL, tok_B.astype(jnp.int32)

    _, toks_LB = jax.lax.scan(body, canvas, jnp.arange(length))
    return toks_LB.T
