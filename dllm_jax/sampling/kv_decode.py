"""AR decoding with a KV cache: one position per step of a ``jax.lax.scan``.

This front door owns the cache: it is preallocated at the model's ``max_len``, carried in
the scan state and written one position per step by ``Transformer.decode_step``. Each step
costs one position's work plus attention over the cache, instead of the reference's full
re-run of the canvas (``ar_sample_reference``), and the compiled program does not grow with
the length. Draws use the reference's keys, so both return the same tokens.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dllm_jax.sampling.canvas import Generation, check_prompts_and_stops, stop_hits
from dllm_jax.sampling.draws import Logits
from dllm_jax.sampling.driver import example_keys


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
    forced_BS = jnp.zeros((batch, length), jnp.int32)
    draw = lambda k, lg: jax.random.categorical(k, lg / temperature)
    return _decode(graphdef, params, keys_B, forced_BS, jnp.zeros((batch,), jnp.int32), bos_id, draw, return_logits)


def _decode(graphdef, params, keys_B, forced_BS, num_forced_B, bos_id, draw, return_logits=False):
    """The decoding scan: position i takes forced_BS[:, i] while i < num_forced_B (a prompt),
    else a draw ``draw(fold_in(key, i), logits)``; the input at i is the token at i - 1, at
    0 ``bos_id`` (an int, or one per row)."""
    model = nnx.merge(graphdef, params, copy=True)
    batch, length = forced_BS.shape

    def body(carry, i):
        input_B, cache = carry
        # Merge inside the body: nnx.scan refuses modules from an outer trace level.
        logits_BV, cache = nnx.merge(graphdef, params, copy=True).decode_step(input_B, i, cache)
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys_B, i)
        tok_B = jax.vmap(draw)(step_keys, logits_BV).astype(jnp.int32)
        tok_B = jnp.where(i < num_forced_B, forced_BS[:, i], tok_B)
        return (tok_B, cache), ((tok_B, logits_BV) if return_logits else tok_B)

    first_B = jnp.broadcast_to(jnp.asarray(bos_id, jnp.int32), (batch,))
    _, out = jax.lax.scan(body, (first_B, model.init_cache(batch, length)), jnp.arange(length))
    if return_logits:
        toks_LB, logits_LBV = out
        return toks_LB.T, jnp.swapaxes(logits_LBV, 0, 1)
    return out.T


@functools.partial(jax.jit, static_argnums=(0, 5))
def ar_decode_program(graphdef, params, keys_B, forced_BS, bos_id, logits: Logits, num_forced_B):
    """The jitted program ``ar_generate`` runs (public for ahead-of-time compilation and benchmarks)."""
    draw = lambda k, lg: jax.random.categorical(k, logits(lg))
    return _decode(graphdef, params, keys_B, forced_BS, num_forced_B, bos_id, draw)


def ar_generate(graphdef, params, prompts, *, length: int, logits: Logits = Logits(), seed: int = 0,
                indices=None, eos_id: int | None = None, stop=(), prompt_starts: bool = False, bos_id=None):
    """Generate ``length`` tokens after each prompt with a causal model and a KV cache.

    The AR counterpart of ``sampling.generate``, with the same prompts, sampling options
    (``Logits``: temperature, top-k, top-p), stop sequences, eos and result type. The prompt
    is fed one position per step through the same scan (batch-invariant: rows of different
    prompt lengths need no padding); position i draws with ``fold_in(example_key, i)``.
    NFE counts one decode step per generated token up to each row's end.

    ``prompt_starts``: the sequence starts with the prompt's first token instead of our bos
    (models imported from Hugging Face never saw our bos: Llama's prompts begin with its own
    ``<s>``, Qwen2's with their first token). That token sits at position 0 and is never
    predicted, exactly as ``transformers``' ``generate`` runs the model.
    """
    model = nnx.merge(graphdef, params)
    config = model.config
    rows, stops = check_prompts_and_stops(prompts, stop, length, config.num_tokens)
    if prompt_starts:
        if min(len(r) for r in rows) == 0:
            raise ValueError("prompt_starts=True needs every prompt to have at least one token (its first)")
        generation = ar_generate(graphdef, params, [r[1:] for r in rows], length=length, logits=logits,
                                 seed=seed, indices=indices, eos_id=eos_id, stop=stop,
                                 bos_id=[r[0] for r in rows])
        return _prepend(generation, [r[0] for r in rows])
    length = int(length)
    ends = np.array([len(r) + length for r in rows])
    if ends.max() > config.max_len:
        b = int(np.argmax(ends))
        raise ValueError(f"prompt {b} has {len(rows[b])} tokens: with length={length} its canvas needs "
                         f"{ends[b]} positions, more than the model's max_len={config.max_len}")
    canvas = int(ends.max())
    forced = np.zeros((len(rows), canvas), np.int32)
    for b, r in enumerate(rows):
        forced[b, : len(r)] = r
    indices = np.arange(len(rows)) if indices is None else np.asarray(indices)
    num_forced = jnp.asarray([len(r) for r in rows], jnp.int32)
    bos = config.bos_input if bos_id is None else jnp.asarray(bos_id, jnp.int32)
    toks = np.asarray(ar_decode_program(graphdef, params, example_keys(seed, indices), jnp.asarray(forced),
                                       bos, logits, num_forced))
    all_stops = stops + (((int(eos_id),),) if eos_id is not None else ())
    prompt_len = np.asarray(num_forced)
    stopped, stop_end = np.full(len(rows), -1), ends.copy()
    if all_stops:
        found, p, which = (np.asarray(a) for a in stop_hits(jnp.asarray(toks), jnp.arange(canvas), all_stops,
                                                             jnp.asarray(prompt_len), jnp.asarray(ends)))
        stop_end = np.where(found, p + 1, ends)
        stopped = np.where(found, which, -1)
    pad = config.special.pad
    toks = np.where(np.arange(canvas)[None] < stop_end[:, None], toks, pad)
    return Generation(tokens=toks, prompt_lengths=prompt_len, ends=stop_end, stopped=stopped,
                      nfe=(stop_end - prompt_len).astype(np.int32), eos_id=eos_id, num_stops=len(stops))


def _prepend(generation: Generation, first) -> Generation:
    """``generation`` with each row's first token put back in front of its canvas."""
    first_B1 = np.asarray(first, np.int32)[:, None]
    return dataclasses.replace(
        generation, tokens=np.concatenate([first_B1, generation.tokens], axis=1),
        prompt_lengths=generation.prompt_lengths + 1, ends=generation.ends + 1)
