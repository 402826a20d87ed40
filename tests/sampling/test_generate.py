"""``generate`` with real tiny Transformers: caches against recomputation, batch invariance,
prompts / infill / eos, stop and resume, bad input.

The models are untrained (random weights): these are equalities and invariances that hold
for any weights; distributions are tested with the oracle denoiser elsewhere.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from dllm_jax.config import MeshConfig, ModelConfig, NoiseConfig, special_ids
from dllm_jax.diffusion import make_objective
from dllm_jax.nn import create_model
from dllm_jax.sampling import ancestral, make_rule
from dllm_jax.sampling.generate import generate, resume
from dllm_jax.sharding import make_mesh

V = 11
PAD = special_ids(V).pad
BLOCK = 4
BASE = dict(num_tokens=V, d_model=32, num_heads=4, num_layers=2, max_len=40)
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [], [3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]]


@functools.cache
def model(attention: str, time_conditioning: bool = False, shift: bool = False, context: str = "block_causal"):
    config = ModelConfig(**BASE, attention=attention, block_size=BLOCK, time_conditioning=time_conditioning,
                         shift=shift, context_attention=context)
    return create_model(config, make_mesh(MeshConfig()), seed=1)


@functools.cache
def rule(process: str = "masked"):
    return ancestral(make_objective(NoiseConfig(process=process), V))


def gen(attention="block_causal", prompts=PROMPTS, shift=False, context="block_causal", **kw):
    kw = {"length": 10, "rule": rule(), "num_steps": 4, **kw}
    return generate(*model(attention, shift=shift, context=context), prompts, **kw)


@pytest.mark.parametrize("shift", [False, True])
def test_one_block_the_size_of_the_canvas_samples_as_recomputation_does(shift):
    """block_size = max_len (the full-sequence objective as a block model): no next block to
    fuse the write into; the exact cache gives recomputation's tokens."""
    config = ModelConfig(**{**BASE, "max_len": 8}, attention="block_causal", block_size=8, shift=shift)
    net = create_model(config, make_mesh(MeshConfig()), seed=1)
    kw = dict(length=6, rule=rule(), num_steps=4, block_size=8)
    cached = generate(*net, [[1, 2], [3]], cache="exact", **kw)
    full = generate(*net, [[1, 2], [3]], cache="none", **kw)
    np.testing.assert_array_equal(cached.tokens, full.tokens)
    assert (np.asarray(cached.tokens)[:, 2:] != special_ids(V).mask).all()


@pytest.mark.parametrize("shift", [False, True])
def test_exact_cache_equals_recomputation(shift):
    cached = gen(block_size=BLOCK, cache="exact", shift=shift)
    separate = gen(block_size=BLOCK, cache="exact", shift=shift, fuse_writes=False)
    full = gen(block_size=BLOCK, cache="none", shift=shift)
    np.testing.assert_array_equal(cached.tokens, full.tokens)
    np.testing.assert_array_equal(separate.tokens, full.tokens)
    # Fused writes: block j - 1 enters the cache in block j's first pass, saving one pass
    # for every generated block after the first block (the last block's write stays).
    starts = np.array([len(p) for p in PROMPTS])
    first_active, last_active = starts // BLOCK, (starts + 10 - 1) // BLOCK
    saved = last_active - first_active + (first_active > 0)
    np.testing.assert_array_equal(separate.nfe - cached.nfe, saved)
    # Recomputation spends K passes per block with something to generate; the cache adds one
    # pass per block (writing its keys and values), prompt-only blocks included.
    print(f"\nexact cache NFE {cached.nfe}, recomputation NFE {full.nfe}")
    assert np.all(full.nfe == 4 * np.ceil((np.array([3, 6, 0, 11]) + 10) / BLOCK - np.array([3, 6, 0, 11]) // BLOCK))


@pytest.mark.parametrize(
    "name,options",
    [("cached", {}), ("confidence", {}), ("threshold", {"threshold": 0.3}), ("remdm", {"schedule": "cap", "eta": 0.3})],
)
def test_every_rule_runs_in_blocks_with_the_exact_cache(name, options):
    """Any rule, not only ancestral: the exact cache returns the recomputed tokens, prompts
    stay, and rules that unmask several tokens per pass spend fewer NFE than K per block."""
    step_rule = make_rule(name, make_objective(NoiseConfig(process="masked"), V), **options)
    kw = dict(block_size=BLOCK, rule=step_rule, num_steps=8)
    cached, full = gen(cache="exact", **kw), gen(cache="none", **kw)
    np.testing.assert_array_equal(cached.tokens, full.tokens)
    for b, prompt in enumerate(PROMPTS):
        assert cached.tokens[b, : len(prompt)].tolist() == prompt
    blocks = np.ceil((np.array([3, 6, 0, 11]) + 10) / BLOCK - np.array([3, 6, 0, 11]) // BLOCK)
    print(f"\n{name}: recomputation NFE {full.nfe} vs K x blocks {8 * blocks}")
    if name == "remdm":
        np.testing.assert_array_equal(full.nfe, 8 * blocks)  # a pass every step
    else:  # a pass only when a token is revealed (cached: or the block just started)
        bound = 10 + (blocks if name == "cached" else 0)
        assert np.all(full.nfe <= bound) and np.all(bound < 8 * blocks)


def test_cached_rule_refuses_a_time_conditioned_model():
    step_rule = make_rule("cached", make_objective(NoiseConfig(process="masked"), V))
    with pytest.raises(ValueError, match="needs a denoiser that ignores t"):
        generate(*model("bidirectional", time_conditioning=True), [[1]], length=4, rule=step_rule, num_steps=2)


@pytest.mark.parametrize("shift", [False, True])
def test_approximate_cache_is_exact_at_one_step_per_block_and_measured_beyond(shift):
    # The refresh pass at a block's start makes the cache exact for that block's first step.
    # A shift model reads each block's logits one position to the left (canvas_chunk).
    one_c = gen("bidirectional", block_size=BLOCK, cache="approximate", num_steps=1, shift=shift)
    one_n = gen("bidirectional", block_size=BLOCK, cache="none", num_steps=1, shift=shift)
    np.testing.assert_array_equal(one_c.tokens, one_n.tokens)
    if shift:  # and the shifted model is really another model: other tokens, same keys
        assert (one_n.tokens != gen("bidirectional", block_size=BLOCK, cache="none", num_steps=1).tokens).any()
    rates = {}
    for k in (4,):
        approx = gen("bidirectional", block_size=BLOCK, cache="approximate", num_steps=k, shift=shift)
        exact = gen("bidirectional", block_size=BLOCK, cache="none", num_steps=k, shift=shift)
        gen_pos = (np.arange(approx.tokens.shape[1])[None] >= approx.prompt_lengths[:, None]) & (
            approx.tokens != PAD
        )
        rates[k] = float(np.mean(approx.tokens[gen_pos] == exact.tokens[gen_pos]))
    print(f"\napproximate (dual) cache vs recomputation, token agreement by K per block: {rates}")


@pytest.mark.parametrize(
    ("attention", "block_size", "cache", "process"),
    [
        ("bidirectional", None, "none", "masked"),
        ("bidirectional", None, "none", "uniform"),
        ("bidirectional", BLOCK, "approximate", "masked"),
        ("block_causal", BLOCK, "exact", "masked"),
    ],
)
def test_batch_invariance(attention, block_size, cache, process):
    kw = dict(block_size=block_size, cache=cache, rule=rule(process))
    batch = gen(attention, **kw)
    for b in (2, 3):  # the empty prompt and the longest: their canvases differ most
        alone = gen(attention, prompts=[PROMPTS[b]], indices=[b], **kw)
        n = alone.tokens.shape[1]
        np.testing.assert_array_equal(alone.tokens[0], batch.tokens[b, :n])
        assert np.all(batch.tokens[b, n:] == PAD)
        assert alone.nfe[0] == batch.nfe[b]
    # Reordering the batch does not change any row either.
    order = [2, 0, 3, 1]
    shuffled = gen(attention, prompts=[PROMPTS[i] for i in order], indices=order, **kw)
    np.testing.assert_array_equal(shuffled.tokens, batch.tokens[order])


def test_prompts_and_infill_are_kept():
    length = 10
    infill = np.full((len(PROMPTS), length), -1)
    infill[:, 4] = 7  # the middle of the generated text
    infill[1, 0] = 0
    infill[2, length - 1] = 5
    out = gen("bidirectional", infill=infill, length=length)
    for b, prompt in enumerate(PROMPTS):
        row = out.tokens[b]
        assert row[: len(prompt)].tolist() == prompt
        known = infill[b] >= 0
        np.testing.assert_array_equal(row[len(prompt) : len(prompt) + length][known], infill[b][known])
        assert np.all((row[len(prompt) : len(prompt) + length] >= 0) & (row[len(prompt) : len(prompt) + length] < V))
        assert out.completions()[b] == row[len(prompt) : len(prompt) + length].tolist()


def test_nothing_after_eos_is_returned():
    free = gen("bidirectional", length=12)
    eos = int(free.tokens[0, 3 + 2])  # a token row 0 did generate: it will stop there
    out = gen("bidirectional", length=12, eos_id=eos)
    # Single-block generation: the canvas is the same, only the cut differs.
    for b, prompt in enumerate(PROMPTS):
        gen_toks = free.tokens[b, len(prompt) : len(prompt) + 12].tolist()
        if eos in gen_toks:
            cut = gen_toks.index(eos)
            assert out.stopped[b] == 0 and out.ends[b] == len(prompt) + cut + 1
            assert out.completions()[b] == gen_toks[:cut]
            assert np.all(out.tokens[b, out.ends[b] :] == PAD)
        else:
            assert out.stopped[b] == -1 and out.completions()[b] == gen_toks
    assert out.stopped[0] == 0 and len(out.completions()[0]) <= 2


def test_stop_and_resume_equals_fresh_generation_with_fewer_nfe():
    first = gen(block_size=BLOCK, cache="exact", length=16)
    stop_seq = [int(t) for t in first.tokens[1, 6 + 5 : 6 + 7]]  # two tokens row 1 generates
    stopped = gen(block_size=BLOCK, cache="exact", length=16, stop=[stop_seq])
    assert stopped.stopped[1] == 0
    tool_result = [[7, 8], [9], [1, 2, 3], [0]]
    resumed = resume(*model("block_causal"), stopped, tool_result, length=8)
    prompts = [stopped.tokens[b, : stopped.ends[b]].tolist() + tool_result[b] for b in range(len(PROMPTS))]
    fresh = gen(prompts=prompts, block_size=BLOCK, cache="exact", length=8, stop=[stop_seq])
    np.testing.assert_array_equal(resumed.tokens, fresh.tokens)
    np.testing.assert_array_equal(resumed.ends, fresh.ends)
    print(f"\nresume NFE {resumed.nfe} vs fresh {fresh.nfe} (stopped at {stopped.ends})")
    assert np.all(resumed.nfe <= fresh.nfe)
    reused = stopped.ends // BLOCK  # finished blocks before each stop are not recomputed
    # Each reused block saves its write pass, except a write that fresh generation shares with
    # its first generated block's first pass anyway (fused writes): the block just before it.
    first_generated = np.array([len(p) for p in prompts]) // BLOCK
    np.testing.assert_array_equal(fresh.nfe - resumed.nfe, reused - (first_generated == reused))


def test_bad_input_errors():
    g, p = model("bidirectional")
    ok = dict(length=4, rule=rule(), num_steps=2)
    with pytest.raises(ValueError, match="prompts is empty"):
        generate(g, p, [], **ok)
    with pytest.raises(ValueError, match="prompt 0 has 38 tokens.*max_len=40"):
        generate(g, p, [[1] * 38], **ok)
    with pytest.raises(ValueError, match=r"infill must have shape \(batch, length\) = \(1, 4\).*\(1, 3\)"):
        generate(g, p, [[1]], infill=np.full((1, 3), -1), **ok)
    with pytest.raises(ValueError, match="num_steps must be an integer >= 1, got 0"):
        generate(g, p, [[1]], **{**ok, "num_steps": 0})
    with pytest.raises(ValueError, match=r"prompts\[0\]\[1\] = 11 is not a token id in \[0, 11\)"):
        generate(g, p, [[1, 11]], **ok)
    with pytest.raises(ValueError, match="guidance needs a prompt.*\\[1\\]"):
        generate(g, p, [[1], []], guidance=1.0, **ok)
    with pytest.raises(ValueError, match="unknown cache 'kv'"):
        generate(g, p, [[1]], block_size=4, cache="kv", **ok)
    with pytest.raises(ValueError, match="exact cache needs a block-causal model"):
        generate(g, p, [[1]], block_size=4, cache="exact", **ok)
    with pytest.raises(ValueError, match="length must be an integer >= 1"):
        generate(g, p, [[1]], **{**ok, "length": 0})
    with pytest.raises(ValueError, match="decode a causal"):
        generate(*create_model(ModelConfig(**BASE, attention="causal"), make_mesh(MeshConfig())), [[1]], **ok)


def test_causal_context_generates_with_the_exact_cache_fused_or_not():
    """Fused writes build the causal context exactly like separate writes; other caches are
    refused (they would attend block-causally within finished blocks)."""
    fused = gen(block_size=BLOCK, cache="exact", shift=True, context="causal")
    separate = gen(block_size=BLOCK, cache="exact", shift=True, context="causal", fuse_writes=False)
    np.testing.assert_array_equal(fused.tokens, separate.tokens)
    with pytest.raises(ValueError, match="context_attention='causal'.*cache='exact'"):
        gen(block_size=BLOCK, cache="none", shift=True, context="causal")


def test_guided_generation_is_the_guided_denoiser_on_the_canvas():
    """``generate(guidance=w)`` = the driver run with ``rules.guided`` around the model (the
    prompt masked in the unconditional half), same keys: guidance lives in one place."""
    import jax
    import jax.numpy as jnp

    from dllm_jax.nn import apply_model
    from dllm_jax.sampling import example_keys, guided, run_sampler
    from dllm_jax.sampling.draws import prior_keys

    g, p = model("bidirectional")
    prompts, G, K, w = [[1, 2, 3], [4, 5, 6]], 6, 4, 1.5
    out = generate(g, p, prompts, length=G, rule=rule(), num_steps=K, guidance=w)
    assert np.all(out.nfe == 2 * K)
    P = 3
    keys_B = example_keys(0, jnp.arange(2))
    fixed_BL = jnp.arange(P + G)[None, :] < P
    canvas = jnp.asarray(np.pad(np.array(prompts), ((0, 0), (0, G))), jnp.int32)
    init_BL = jnp.where(fixed_BL, canvas, rule().prior(prior_keys(keys_B, jnp.arange(P + G))))
    denoise = guided(lambda x, t: apply_model(g, p, x, t), jnp.broadcast_to(fixed_BL, (2, P + G)),
                     special_ids(V).mask, w)
    block_keys_B = jax.vmap(jax.random.fold_in, (0, None))(keys_B, 0)
    want, _ = run_sampler(denoise, rule(), init_BL, block_keys_B, K, jnp.broadcast_to(fixed_BL, (2, P + G)))
    np.testing.assert_array_equal(out.tokens, np.asarray(want))
