"""``generate``: the front door that wires a model, its KV cache and a step rule together.

The canvas of row b is its prompt (positions [0, P_b)), then ``length`` positions to
generate (known infill tokens among them stay fixed), then padding up to the batch's canvas
length, which no position attends to. Generation runs block by block (``block_size``; one
block spanning the canvas by default): inside a block, K steps of the step rule under
``jax.lax.scan``; blocks are a second scan, so shapes are static and nothing recompiles
with the prompt.

Caches (``cache``):
- ``"none"``: every step recomputes the whole canvas. Exact.
- ``"exact"``: block-causal models (BD3-LM). A finished block's keys and values are
  written once (one pass over the clean block) and read by every later block; equal to
  recomputing everything, since a block-causal block never attends to later blocks.
- ``"approximate"``: bidirectional models (Fast-dLLM's dual cache). At each block's start
  one full pass refreshes every position's keys and values; the block's steps then
  recompute only the block, reading the cached (stale) prefix and suffix. Not equal to
  recomputation: ``tests/sampling/test_generate.py`` measures the agreement.

Randomness is keyed by (seed, example index, block, step, absolute position), so a row's
output depends neither on its batch-mates nor on their prompt lengths, and a resumed
generation draws what a fresh one would.

Stop and resume: generation of a row stops at the end of the first block in which a stop
sequence (or ``eos_id``) ends inside its generated text. ``resume`` appends text (e.g. a
tool's result) after the stop and continues; with the exact cache it reuses the keys and
values of every finished block before the stop instead of recomputing them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dllm_jax.config import ModelConfig, special_ids
from dllm_jax.sampling.blocks import BlockDenoiser, Plan, run_blocks
from dllm_jax.sampling.canvas import (
    Generation,
    as_rows,
    check_ids,
    check_infill,
    check_prompts_and_stops,
    round_up,
)
from dllm_jax.sampling.driver import StepRule, check_num_steps, example_keys
from dllm_jax.sampling.guidance import guided

CACHE_MODES = ("none", "exact", "approximate")


def generate(
    graphdef,
    params,
    prompts,
    *,
    length: int,
    rule: StepRule,
    num_steps: int,
    seed: int = 0,
    indices=None,
    block_size: int | None = None,
    cache: str = "none",
    infill=None,
    stop: Sequence[Sequence[int]] = (),
    eos_id: int | None = None,
    guidance: float = 0.0,
    fuse_writes: bool = True,
) -> Generation:
    """Generate ``length`` tokens after each prompt.

    Args:
      graphdef, params: a diffusion ``Transformer`` (``create_model`` / ``load_run``).
      prompts: B sequences of token ids, of any lengths (empty allowed, unless guided).
      length: G >= 1, the positions to generate after each prompt.
      rule: a step rule (``sampling.make_rule``, ``ancestral``...).
      num_steps: K >= 1 steps (per block with ``block_size``).
      seed, indices: randomness comes from (seed, indices[b]); indices default to 0..B-1.
      block_size: generate block by block (semi-autoregressively); the canvas is rounded
        up to whole blocks. None: one block over the whole canvas.
      cache: ``"none"``, ``"exact"`` (block-causal model) or ``"approximate"``
        (bidirectional model); caches need ``block_size``.
      infill: optional (B, G) ids with -1 where unknown: known positions are kept.
      stop: stop sequences; a row stops after the block where one ends in its text.
      eos_id: if set, a row also stops at eos (variable length); nothing after it is
        returned.
      guidance: classifier-free guidance weight w >= 0 (``cache="none"`` only): logits
        (1 + w) log p(x | prompt) - w log p(x | prompt masked), two passes per step.
      fuse_writes: with the exact cache, write each finished block in the pass that gives
        the next block's first logits (one pass over both blocks: the same tokens, one pass
        per block less); False writes it in a pass of its own.

    Returns:
      A ``Generation``.
    """
    model, plan, state, indices = _prepare(
        graphdef, params, prompts, length=length, rule=rule, num_steps=num_steps, indices=indices,
        block_size=block_size, cache=cache, infill=infill, stop=stop, eos_id=eos_id, guidance=guidance,
        fuse_writes=fuse_writes,
    )
    return _run(graphdef, params, model, plan, seed, indices, state)


class Program(NamedTuple):
    """A prepared ``generate`` call, for ahead-of-time compilation and benchmarks:
    ``fn.lower(*static, *dynamic).compile()`` gives a program that takes ``dynamic``."""

    fn: Callable
    static: tuple  # (graphdef, plan, time_conditioned): jit static arguments
    dynamic: tuple  # (params, keys, tokens, fixed, prompt lengths, ends, cached blocks, cache)

    @property
    def args(self) -> tuple:
        return self.static + self.dynamic

    @property
    def canvas(self) -> int:
        """Positions of the canvas (prompt + generation, rounded up to whole blocks)."""
        return self.dynamic[2].shape[1]


def generate_program(graphdef, params, prompts, *, seed: int = 0, **options) -> Program:
    """The program ``generate`` would run with these arguments (see ``Program``)."""
    model, plan, state, indices = _prepare(graphdef, params, prompts, **options)
    args = _jit_args(graphdef, params, model, plan, seed, indices, state)
    return Program(_generate_jit, args[:3], args[3:])


def _prepare(graphdef, params, prompts, *, length, rule, num_steps, indices=None, block_size=None,
             cache="none", infill=None, stop=(), eos_id=None, guidance=0.0, fuse_writes=True):
    """Check ``generate``'s arguments; (model, plan, host state, example indices)."""
    model = nnx.merge(graphdef, params)
    config: ModelConfig = model.config
    prompt_rows, stops = check_prompts_and_stops(prompts, stop, length, config.num_tokens)
    num_rows, length = len(prompt_rows), int(length)
    infill_BG = check_infill(infill, num_rows, length, config.num_tokens)
    if eos_id is not None:
        check_ids([[eos_id]], config.num_tokens, "eos_id")
        eos_id = int(eos_id)
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float, np.integer, np.floating)) \
            or not math.isfinite(guidance) or guidance < 0:
        raise ValueError(f"guidance must be a finite number >= 0, got {guidance!r}")
    if guidance > 0:
        empty = [b for b, r in enumerate(prompt_rows) if not r]
        if empty:
            raise ValueError(f"guidance needs a prompt to drop, but prompts {empty} are empty")
    ends = [len(r) + length for r in prompt_rows]
    for b, end in enumerate(ends):
        if end > config.max_len:
            raise ValueError(
                f"prompt {b} has {len(prompt_rows[b])} tokens: with length={length} its canvas needs "
                f"{end} positions, more than the model's max_len={config.max_len}"
            )
    plan, canvas = _plan(config, rule, num_steps, block_size, cache, stops, eos_id, guidance, max(ends))
    plan = dataclasses.replace(plan, fuse_writes=bool(fuse_writes))
    tokens_BL = np.full((num_rows, canvas), plan.pad_id, np.int32)
    fixed_BL = np.ones((num_rows, canvas), bool)
    for b, r in enumerate(prompt_rows):
        tokens_BL[b, : len(r)] = r
        known = infill_BG[b] >= 0
        fixed_BL[b, len(r) : ends[b]] = known
        tokens_BL[b, len(r) : ends[b]] = np.where(known, infill_BG[b], plan.pad_id)
    if indices is None:
        indices = np.arange(num_rows)
    indices = np.asarray(indices)
    if indices.shape != (num_rows,):
        raise ValueError(f"indices must have shape ({num_rows},), got {indices.shape}")
    state = dict(
        tokens=tokens_BL, fixed=fixed_BL, prompt_lengths=np.array([len(r) for r in prompt_rows]),
        ends=np.array(ends), cached_blocks=np.zeros(num_rows, np.int32), cache=None,
    )
    return model, plan, state, indices


def resume(graphdef, params, previous: Generation, appended, *, length: int, num_steps: int | None = None) -> Generation:
    """Continue a generation after appending text to each row (e.g. a tool's result).

    Row b's new prompt is its text so far (prompt and generated tokens up to ``ends[b]``)
    followed by ``appended[b]``; then ``length`` more tokens are generated with the same
    rule, seed and example indices. The tokens equal those of ``generate`` with that prompt;
    with the exact cache, finished blocks before the stop are not recomputed.
    """
    info = previous._resume
    if not info:
        raise ValueError("this Generation holds no resume state")
    plan: Plan = info["plan"]
    appended_rows = as_rows(appended, "appended")
    if len(appended_rows) != len(previous.ends):
        raise ValueError(f"appended has {len(appended_rows)} rows, the generation {len(previous.ends)}")
    model = nnx.merge(graphdef, params)
    config = model.config
    check_ids(appended_rows, config.num_tokens, "appended")
    if not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(f"length must be an integer >= 1, got {length!r}")
    prompts = [previous.tokens[b, : previous.ends[b]].tolist() + a for b, a in enumerate(appended_rows)]
    ends = [len(p) + length for p in prompts]
    if max(ends) > config.max_len:
        b = int(np.argmax(ends))
        raise ValueError(f"row {b} would need {ends[b]} positions, more than max_len={config.max_len}")
    if num_steps is not None:
        plan = dataclasses.replace(plan, num_steps=check_num_steps(num_steps))
    canvas = round_up(max(ends), plan.block) if plan.num_blocks > 1 or plan.cache != "none" else max(ends)
    if plan.num_blocks == 1 and plan.cache == "none":
        plan = dataclasses.replace(plan, block=canvas)
    plan = dataclasses.replace(plan, num_blocks=canvas // plan.block)
    tokens_BL = np.full((len(prompts), canvas), plan.pad_id, np.int32)
    fixed_BL = np.ones_like(tokens_BL, bool)
    for b, p in enumerate(prompts):
        tokens_BL[b, : len(p)] = p
        fixed_BL[b, len(p) : ends[b]] = False
    state = dict(
        tokens=tokens_BL, fixed=fixed_BL, prompt_lengths=np.array([len(p) for p in prompts]),
        ends=np.array(ends), cached_blocks=np.zeros(len(prompts), np.int32), cache=None,
    )
    if plan.cache == "exact" and info["cache"] is not None:
        old = info["cache"]
        pad = canvas - old.k.shape[2]
        widths = ((0, 0), (0, 0), (0, max(pad, 0)), (0, 0), (0, 0))
        state["cache"] = jax.tree.map(lambda a: jnp.pad(a, widths)[:, :, :canvas], old)
        # Blocks wholly before each row's old end are unchanged: their keys and values stand.
        state["cached_blocks"] = (previous.ends // plan.block).astype(np.int32)
    return _run(graphdef, params, model, plan, info["seed"], info["indices"], state)


def _plan(config: ModelConfig, rule, num_steps, block_size, cache, stops, eos_id, guidance, longest):
    num_steps = check_num_steps(num_steps)
    if not isinstance(rule, StepRule):
        raise TypeError(f"rule must be a StepRule (see sampling.make_rule), got {type(rule).__name__}")
    if config.attention == "causal":
        raise ValueError("generate is for diffusion models; decode a causal (AR) model with ar_generate")
    if cache not in CACHE_MODES:
        raise ValueError(f"unknown cache {cache!r}; expected one of {CACHE_MODES}")
    if block_size is not None and (not isinstance(block_size, (int, np.integer)) or block_size < 1):
        raise ValueError(f"block_size must be an integer >= 1 or None, got {block_size!r}")
    if cache != "none" and block_size is None:
        raise ValueError(f"cache={cache!r} works block by block: give block_size")
    if cache == "exact":
        if config.attention != "block_causal":
            raise ValueError(
                f"the exact cache needs a block-causal model, this one is {config.attention!r}; "
                "use cache='approximate' for a bidirectional model"
            )
        if block_size != config.block_size:
            raise ValueError(f"the exact cache needs block_size = the model's block_size {config.block_size}, got {block_size}")
        if config.time_conditioning:
            raise ValueError("the exact cache needs a model that ignores t (finished blocks are cached at one t)")
    if config.context_attention == "causal" and cache != "exact":
        raise ValueError(
            "a model with context_attention='causal' attends causally within finished blocks, which only "
            f"the exact cache reproduces: use cache='exact' with block_size={config.block_size}, got cache={cache!r}"
        )
    if cache == "approximate" and config.attention != "bidirectional":
        raise ValueError(f"the approximate cache is for bidirectional models, this one is {config.attention!r}")
    if guidance > 0 and cache != "none":
        raise ValueError("guidance needs cache='none' (the unguided pass masks the prompt, which a cache holds)")
    if block_size is None:
        block, canvas = longest, longest
    else:
        block, canvas = int(block_size), round_up(longest, int(block_size))
        if canvas > config.max_len:
            raise ValueError(
                f"the canvas rounded up to whole blocks of {block} is {canvas} positions, more than max_len={config.max_len}"
            )
    ids = special_ids(config.num_tokens)
    plan = Plan(rule, num_steps, block, canvas // block, cache, stops, eos_id, float(guidance), ids.mask, ids.pad)
    return plan, canvas


def _jit_args(graphdef, params, model, plan: Plan, seed, indices, state) -> tuple:
    """The arguments of ``_generate_jit`` for one prepared call."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32) (larger ones would wrap onto others), got {seed!r}")
    num_rows, canvas = state["tokens"].shape
    cache = state["cache"]
    if cache is None and plan.cache == "exact":
        cache = model.init_cache(num_rows, canvas)
    return (
        graphdef, plan, model.config.time_conditioning, params, example_keys(seed, indices),
        jnp.asarray(state["tokens"]), jnp.asarray(state["fixed"]),
        jnp.asarray(state["prompt_lengths"], jnp.int32), jnp.asarray(state["ends"], jnp.int32),
        jnp.asarray(state["cached_blocks"], jnp.int32), cache,
    )


def _run(graphdef, params, model, plan: Plan, seed, indices, state) -> Generation:
    out = _generate_jit(*_jit_args(graphdef, params, model, plan, seed, indices, state))
    tokens, ends, stopped, nfe, cache = out
    return Generation(
        tokens=np.asarray(tokens), prompt_lengths=np.asarray(state["prompt_lengths"]), ends=np.asarray(ends),
        stopped=np.asarray(stopped), nfe=np.asarray(nfe), eos_id=plan.eos_id, num_stops=len(plan.stops),
        _resume=dict(plan=plan, seed=seed, indices=indices, cache=cache),
    )


class _ModelDenoiser(BlockDenoiser):
    """A Transformer with no cache: every step is a pass over the whole canvas (guided or
    not). The cache modes of ``generate`` are its subclasses."""

    keeps_blocks = False

    def __init__(self, graphdef, params, plan: Plan, time_conditioned, valid_BS, prompt_BS):
        self.graphdef, self.params, self.plan = graphdef, params, plan
        self.time_conditioned = time_conditioned
        self.passes = 2 if plan.guidance > 0 else 1
        self.valid_BS, self.prompt_BS = valid_BS, prompt_BS

    def model(self):
        # Merge inside each use: nnx transforms refuse modules from an outer trace level.
        return nnx.merge(self.graphdef, self.params, copy=True)

    def full_logits(self, canvas_BS, t_B):
        plan, B, S = self.plan, *canvas_BS.shape

        def canvas_denoise(tokens_XS, t_X):  # X = B, or 2B for guidance's two halves
            m = self.model()
            valid_XS = jnp.tile(self.valid_BS, (tokens_XS.shape[0] // B, 1))
            return m.forward_chunk(tokens_XS, 0, m.init_cache(tokens_XS.shape[0], S), valid_XS, t_X)[0]

        if plan.guidance == 0:
            return canvas_denoise(canvas_BS, t_B)
        return guided(canvas_denoise, self.prompt_BS, plan.mask_id, plan.guidance)(canvas_BS, t_B)

    def chunk_logits(self, cache, tokens_BS, x_BC, start, t_B):
        canvas = jax.lax.dynamic_update_slice_in_dim(tokens_BS, x_BC, start, axis=1)
        return jax.lax.dynamic_slice_in_dim(self.full_logits(canvas, t_B), start, x_BC.shape[1], axis=1)

    def write(self, cache, new_BC, start):
        return cache  # never called (keeps_blocks is False): nothing is kept across blocks


class _CachedDenoiser(_ModelDenoiser):
    """Reads a block's logits through the KV cache of the positions outside it."""

    def chunk_logits(self, cache, tokens_BS, x_BC, start, t_B):
        canvas = jax.lax.dynamic_update_slice_in_dim(tokens_BS, x_BC, start, axis=1)
        return self.model().canvas_chunk(canvas, start, x_BC.shape[1], cache, self.valid_BS, t_B)


class _ExactCache(_CachedDenoiser):
    """Block-causal model: finished blocks are written once; with ``plan.fuse_writes`` in
    the pass that gives the next block's first logits."""

    keeps_blocks = True

    def __init__(self, *args):
        super().__init__(*args)
        self.fuses_writes = self.plan.fuse_writes

    def write(self, cache, new_BC, start):
        return self.model().write_chunk(new_BC, start, cache, self.valid_BS)

    def fused(self, cache, tokens_BS, x_BC, start):
        C = x_BC.shape[1]
        canvas = jax.lax.dynamic_update_slice_in_dim(tokens_BS, x_BC, start, axis=1)
        logits, cache = self.model().canvas_chunk(canvas, start - C, 2 * C, cache, self.valid_BS, return_cache=True,
                                                  clean_until=start)
        return logits[:, C:], cache


class _ApproximateCache(_CachedDenoiser):
    """Bidirectional model (Fast-dLLM's dual cache): every position's keys and values are
    refreshed in one pass at each block's start and kept for that block's steps."""

    def refresh(self, cache, tokens_BS):
        m = self.model()
        B, S = tokens_BS.shape
        return m.forward_chunk(tokens_BS, 0, m.init_cache(B, S), self.valid_BS, jnp.ones((B,)))[1], 1



_DENOISERS = {"none": _ModelDenoiser, "exact": _ExactCache, "approximate": _ApproximateCache}


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _generate_jit(graphdef, plan: Plan, time_conditioned, params, keys_B, tokens_BS, fixed_BS, prompt_len_B, end_B,
                  cached_blocks_B, cache):
    pos_S = jnp.arange(tokens_BS.shape[1])
    valid_BS = pos_S[None] < end_B[:, None]
    prompt_BS = pos_S[None] < prompt_len_B[:, None]
    denoiser = _DENOISERS[plan.cache](graphdef, params, plan, time_conditioned, valid_BS, prompt_BS)
    return run_blocks(denoiser, plan, keys_B, tokens_BS, fixed_BS, prompt_len_B, end_B, cached_blocks_B, cache)


