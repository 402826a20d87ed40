"""AR decoding with a KV cache: one position per step of a ``jax.lax.scan``.

This front door owns the cache: it is preallocated at the model's ``max_len``, carried in
the scan state and written one position per step by ``Transformer.decode_step``. Each step
costs one position's work plus attention over the cache, instead of the reference's full
re-run of the canvas (``ar_sample_reference``), and the compiled program does not grow with
the length. Draws use the reference's keys, so both return the same tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def ar_sample_cached(
    graphdef,
    params,
    keys_B,
    length: int,
    bos_id: int,
    temperature: float = 1.0,
    *,
    return_logits: bool = False,
):
    """Sample ``length`` tokens left to right from a causal model, decoding with a KV cache.

    Position i's token is drawn with ``fold_in(keys_B[b], i)`` from logits / temperature,
    exactly as in ``ar_sample_reference``; the input at position 0 is ``bos_id``. Jit with
    ``graphdef``, ``length``, ``bos_id``, ``temperature`` and ``return_logits`` static.

    Args:
      graphdef, params: a causal ``Transformer`` split with ``nnx.split``.
      keys_B: one key per example.
      length: tokens to sample, ``1 <= length <= max_len``.
      bos_id: the input token at position 0.
      temperature: > 0; logits are divided by it before each draw.
      return_logits: also return the (untempered) logits each token was drawn from.

    Returns:
      tokens (B, length) int32, and with ``return_logits`` the logits (B, length,
      num_tokens) float32.

    Raises:
      ValueError: on a length outside [1, max_len] or a temperature <= 0.
    """
    model = nnx.merge(graphdef, params, copy=True)
    max_len = model.config.max_len
    if not 1 <= length <= max_len:
        raise ValueError(f"length must be in [1, max_len={max_len}], got {length}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch = keys_B.shape[0]

    def body(carry, i):
        input_B, cache = carry
        # Merge inside the body: nnx.scan refuses modules from an outer trace level.
        logits_BV, cache = nnx.merge(graphdef, params, copy=True).decode_step(input_B, i, cache)
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys_B, i)
        draw = jax.vmap(lambda k, lg: jax.random.categorical(k, lg / temperature))
        tok_B = draw(step_keys, logits_BV).astype(jnp.int32)
        return (tok_B, cache), ((tok_B, logits_BV) if return_logits else tok_B)

    first_B = jnp.full((batch,), bos_id, jnp.int32)
    _, out = jax.lax.scan(body, (first_B, model.init_cache(batch)), jnp.arange(length))
    if return_logits:
        toks_LB, logits_LBV = out
        return toks_LB.T, jnp.swapaxes(logits_LBV, 0, 1)
    return out.T
