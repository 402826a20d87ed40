"""The block loop shared by ``generate`` and exact-oracle tests.

A canvas is generated block by block: inside a block, K steps of a step rule under
``jax.lax.scan``; blocks are a second scan. What the loop needs of a model is a
``BlockDenoiser``: the logits of the block being generated, and (for the exact cache) how a
finished block is stored for later ones. ``generate`` supplies one around a Transformer
(its cache modes); ``sample_blocks`` runs the loop for any denoiser, e.g. the exact
block-conditional oracle of a tiny distribution.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dllm_jax.sampling.canvas import stop_hits
from dllm_jax.sampling.draws import prior_keys
from dllm_jax.sampling.driver import StepRule, check_num_steps, run_sampler


class StepDenoiser:
    """A denoise callable that states whether it reads t (the cached rule needs not)."""

    def __init__(self, fn, time_conditioned: bool, passes: int = 1):
        self.fn, self.time_conditioned, self.passes = fn, time_conditioned, passes

    def __call__(self, tokens_BL, t_B):
        return self.fn(tokens_BL, t_B)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static settings of one compiled generation (hashable: a jit static argument)."""

    rule: StepRule
    num_steps: int
    block: int
    num_blocks: int
    cache: str
    stops: tuple[tuple[int, ...], ...]
    eos_id: int | None
    guidance: float
    mask_id: int
    pad_id: int
    fuse_writes: bool = True  # exact cache: a finished block is written in the next block's first pass


class BlockDenoiser(abc.ABC):
    """What the block loop needs of a model: logits of a block given the canvas, and (for a
    cache) how a finished block is stored. ``cache`` is whatever the denoiser keeps across
    blocks (a KV cache for a Transformer, the clean canvas for an exact oracle)."""

    time_conditioned: bool = False
    passes: int = 1
    keeps_blocks: bool = True  # finished blocks are written (``write``), one pass each, counted in NFE
    fuses_writes: bool = False  # has ``fused``: a finished block is written in the next block's first pass

    def refresh(self, cache, tokens_BS):
        """(cache, extra passes) at a block's start (the approximate cache's full pass)."""
        return cache, 0

    @abc.abstractmethod
    def chunk_logits(self, cache, tokens_BS, x_BC, start, t_B):
        """Logits (B, C, V) of the block at ``start`` holding ``x_BC``, the rest of the canvas
        as in ``tokens_BS``."""

    @abc.abstractmethod
    def write(self, cache, new_BC, start):
        """The cache with a finished block written (the exact cache's write pass)."""

    def fused(self, cache, tokens_BS, x_BC, start):
        """(logits of the block at ``start`` holding ``x_BC`` at its first step, the cache with
        the previous block [start - C, start) written). A denoiser that sets ``fuses_writes``
        does this in one pass over both blocks; this default takes two (write, then read)."""
        C = x_BC.shape[1]
        previous_BC = jax.lax.dynamic_slice_in_dim(tokens_BS, start - C, C, axis=1)
        cache = self.write(cache, previous_BC, start - C)
        return self.chunk_logits(cache, tokens_BS, x_BC, start, jnp.ones(x_BC.shape[:1])), cache


class _Carry(NamedTuple):
    """The block scan's carry. ``pending_B`` (fused writes): rows whose previous block still
    has to enter the cache."""

    tokens_BS: jax.Array
    cache: object
    nfe_B: jax.Array
    done_B: jax.Array
    stop_end_B: jax.Array
    stopped_B: jax.Array
    pending_B: jax.Array


@dataclasses.dataclass(frozen=True)
class _BlockLoop:
    """One block of ``run_blocks``: K steps of the rule (or nothing, for a fixed block), the
    finished block's cache write, the stop check."""

    denoiser: BlockDenoiser
    plan: Plan
    keys_B: jax.Array
    fixed_BS: jax.Array
    prompt_len_B: jax.Array
    end_B: jax.Array
    cached_blocks_B: jax.Array

    @property
    def fused(self) -> bool:
        # one block (block size = canvas): no next block to fuse a write into
        many = self.fixed_BS.shape[1] > self.plan.block
        return self.denoiser.keeps_blocks and self.denoiser.fuses_writes and many

    @property
    def stops(self) -> tuple:
        eos = ((self.plan.eos_id,),) if self.plan.eos_id is not None else ()
        return self.plan.stops + eos

    def body(self, carry: _Carry, j):
        C = self.plan.block
        start = j * C
        chunk_BC = jax.lax.dynamic_slice_in_dim(carry.tokens_BS, start, C, axis=1)
        fixed_BC = jax.lax.dynamic_slice_in_dim(self.fixed_BS, start, C, axis=1) | carry.done_B[:, None]
        active_B = jnp.any(~fixed_BC, axis=1)
        block_keys_B = jax.vmap(jax.random.fold_in, (0, None))(self.keys_B, j)
        new_BC, used_B, cache = jax.lax.cond(
            jnp.any(active_B), lambda c: self._steps(c, carry, chunk_BC, fixed_BC, start, block_keys_B),
            lambda c: self._skip(c, carry, chunk_BC, start), carry.cache)
        nfe_B = carry.nfe_B + jnp.where(active_B, used_B, 0)
        tokens_BS = jax.lax.dynamic_update_slice_in_dim(carry.tokens_BS, new_BC, start, axis=1)
        cache, nfe_B, pending_B = self._keep(carry, cache, nfe_B, new_BC, active_B, j, start)
        done_B, stop_end_B, stopped_B = self._check_stops(carry, tokens_BS, start, active_B)
        return _Carry(tokens_BS, cache, nfe_B, done_B, stop_end_B, stopped_B, pending_B), None

    def _steps(self, carried, carry: _Carry, chunk_BC, fixed_BC, start, block_keys_B):
        tokens_BS, C = carry.tokens_BS, self.plan.block
        cache, extra = self.denoiser.refresh(carried, tokens_BS)  # (the refreshed cache is this block's only)
        reuse, first_BCV = jnp.bool_(False), None
        if self.fused:  # the previous block's write and this block's first logits in one pass
            shape = jax.eval_shape(lambda c: self.denoiser.fused(c, tokens_BS, chunk_BC, start)[0], cache)
            reuse = jnp.any(carry.pending_B)
            first_BCV, cache = jax.lax.cond(
                reuse, lambda c: self.denoiser.fused(c, tokens_BS, chunk_BC, start),
                lambda c: (jnp.zeros(shape.shape, shape.dtype), c), cache)

        def block_logits(x_BC, t_B):
            def fresh():
                return self.denoiser.chunk_logits(cache, tokens_BS, x_BC, start, t_B)

            if not self.fused:
                return fresh()
            # the first step's input is exactly what the fused pass saw
            first = reuse & (t_B[0] >= 1.0) & jnp.all(x_BC == chunk_BC)
            return jax.lax.cond(first, lambda: first_BCV, fresh)

        denoise = StepDenoiser(block_logits, self.denoiser.time_conditioned, passes=self.denoiser.passes)
        new_BC, used_B = run_sampler(denoise, self.plan.rule, chunk_BC, block_keys_B, self.plan.num_steps,
                                     fixed_BC, start + jnp.arange(C))
        return new_BC, used_B + extra, cache if self.fused else carried

    def _skip(self, cache, carry: _Carry, chunk_BC, start):
        C = self.plan.block
        if self.fused:
            prev_BC = jax.lax.dynamic_slice_in_dim(carry.tokens_BS, jnp.maximum(start - C, 0), C, axis=1)
            cache = jax.lax.cond(jnp.any(carry.pending_B), lambda c: self.denoiser.write(c, prev_BC, start - C),
                                 lambda c: c, cache)
        return chunk_BC, jnp.zeros(chunk_BC.shape[:1], jnp.int32), cache

    def _keep(self, carry: _Carry, cache, nfe_B, new_BC, active_B, j, start):
        """(cache, nfe, pending) after a finished block is written (or left pending)."""
        if not self.denoiser.keeps_blocks:
            return cache, nfe_B, carry.pending_B
        write_B = ~carry.done_B & (j >= self.cached_blocks_B) & (start < self.end_B)
        if self.fused:
            return cache, nfe_B + (carry.pending_B & ~active_B), write_B  # a write these rows did not share
        cache = jax.lax.cond(jnp.any(write_B), lambda c: self.denoiser.write(c, new_BC, start), lambda c: c, cache)
        return cache, nfe_B + write_B, carry.pending_B

    def _check_stops(self, carry: _Carry, tokens_BS, start, active_B):
        if not self.stops:
            return carry.done_B, carry.stop_end_B, carry.stopped_B
        cols_C = start + jnp.arange(self.plan.block)
        found_B, p_B, which_B = stop_hits(tokens_BS, cols_C, self.stops, self.prompt_len_B, self.end_B)
        found_B &= active_B
        return (carry.done_B | found_B, jnp.where(found_B, p_B + 1, carry.stop_end_B),
                jnp.where(found_B, which_B, carry.stopped_B))

    def flush(self, carry: _Carry):
        """(cache, nfe) with the last block written: it has no next block to share a pass."""
        if not self.fused:
            return carry.cache, carry.nfe_B
        last = (self.plan.num_blocks - 1) * self.plan.block
        last_BC = jax.lax.dynamic_slice_in_dim(carry.tokens_BS, last, self.plan.block, axis=1)
        cache = jax.lax.cond(jnp.any(carry.pending_B), lambda c: self.denoiser.write(c, last_BC, last),
                             lambda c: c, carry.cache)
        return cache, carry.nfe_B + carry.pending_B


def run_blocks(denoiser: BlockDenoiser, plan: Plan, keys_B, tokens_BS, fixed_BS, prompt_len_B, end_B,
               cached_blocks_B, cache):
    """The block loop of ``generate`` (traceable): K steps of the rule per block, blocks in a
    scan, finished blocks written to the cache (``denoiser.keeps_blocks``), rows stopped at
    the end of the block where a stop sequence ends.

    Returns:
      (tokens_BS, ends_B, stopped_B, nfe_B, cache).
    """
    B, S = tokens_BS.shape
    pos_S = jnp.arange(S)
    tokens_BS = jnp.where(fixed_BS, tokens_BS, plan.rule.prior(prior_keys(keys_B, pos_S)))
    loop = _BlockLoop(denoiser, plan, keys_B, fixed_BS, prompt_len_B, end_B, cached_blocks_B)
    zeros_B, no_B = jnp.zeros((B,), jnp.int32), jnp.zeros((B,), bool)
    carry = _Carry(tokens_BS, cache, zeros_B, no_B, end_B, zeros_B - 1, no_B)
    carry, _ = jax.lax.scan(loop.body, carry, jnp.arange(plan.num_blocks))
    cache, nfe_B = loop.flush(carry)
    tokens_BS = jnp.where(pos_S[None] < carry.stop_end_B[:, None], carry.tokens_BS, plan.pad_id)
    return tokens_BS, carry.stop_end_B, carry.stopped_B, nfe_B, cache


def sample_blocks(denoiser: BlockDenoiser, rule: StepRule, keys_B, *, length: int, block_size: int, num_steps: int,
                  cache, pad_id: int = -1):
    """Unprompted block-by-block sampling with the exact cache for any ``BlockDenoiser``
    (e.g. an exact oracle: ``tests/sampling/test_block_sampler_oracle.py``). ``cache`` is the
    denoiser's empty cache; ``length`` a multiple of ``block_size``. Returns (tokens, nfe)."""
    if length % block_size:
        raise ValueError(f"length {length} must be a multiple of block_size={block_size}")
    B = keys_B.shape[0]
    plan = Plan(rule, check_num_steps(num_steps), block_size, length // block_size, "exact", (), None, 0.0, -1,
                 pad_id)
    tokens = jnp.full((B, length), pad_id, jnp.int32)
    out = run_blocks(denoiser, plan, keys_B, tokens, jnp.zeros((B, length), bool), jnp.zeros((B,), jnp.int32),
                     jnp.full((B,), length, jnp.int32), jnp.zeros((B,), jnp.int32), cache)
    return out[0], out[3]
