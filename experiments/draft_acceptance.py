"""How many tokens per pass a block model's drafts could ever buy: speculative acceptance.

A block pass that drafts the tokens of a block and has them verified by the causal (AR)
clean stream accepts draft k with probability sum_v min(p_k(v), q_k(v)) (speculative
sampling), p_k the AR law of that token given everything before it, q_k the drafter's law.
This script measures, on validation data:

- ``--block RUN``: the block model's own acceptance, q_k its noisy-stream law at block
  position k with the first ``v`` positions of the block visible (v = 0 .. block - 1) and
  p_k its clean (causal) stream's law given the true tokens before k.
- ``--ar RUN``: the ceiling for *any* drafter of a fully masked block: q_k the AR run's
  own marginal of token s + k given x_{<s} (the tokens between marginalised over
  ``--samples`` ancestral continuations, leave-one-out), p_k its law given one sampled
  continuation. No denoiser that sees only x_{<s} can draft better against that AR law.

From acceptances a_1 .. a_{C-1} (position 0 of a block is the AR prediction itself, a_0 = 1)
an ideal speculative decoder, fresh drafts at every pass, commits at most
1 + a_1 + a_1 a_2 + ... tokens per pass: its inverse bounds passes per token from below.
A decoder that must re-draft after a rejection does worse (``redraft_passes_per_token``).

    python -m experiments.draft_acceptance --block runs/block/adapt_block4_after_7e_ctxar \
        --ar runs/block/ar_7e --out benchmarks/block/context_ar/acceptance.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dllm_jax.diffusion import shift_right
from dllm_jax.sharding import make_mesh
from dllm_jax.training.loop import eval_batches, load_run


def block_acceptance(run_dir: Path, num_batches: int = 8) -> list[list[float]]:
    """Row v: mean acceptance at each block position with the first v positions visible
    (entries below v are not drafts and read ~1), blocks after the sequence's first."""
    exp, graphdef, params, tok, _, _ = load_run(run_dir)
    mesh, blk, mask_id, V = make_mesh(exp.mesh), exp.model.block_size, exp.model.special.mask, exp.model.num_tokens
    if not (exp.model.shift and exp.model.context_attention == "causal"):
        raise SystemExit(f"{run_dir}: needs a shift block model with context_attention='causal' (its clean "
                         f"stream is the verifier), got shift={exp.model.shift}, "
                         f"context_attention={exp.model.context_attention!r}")

    @jax.jit
    def accept(p, tokens_BL, visible):
        B, L = tokens_BL.shape
        shown_BL = jnp.where((jnp.arange(L) % blk) < visible, tokens_BL, mask_id)
        q_BLV, clean_BLV = nnx.merge(graphdef, p, copy=True).two_stream(shown_BL, tokens_BL, None, with_context=True)
        q_BLV = jax.nn.softmax(q_BLV[:, 1:, :V].astype(jnp.float32), -1)
        p_BLV = jax.nn.softmax(clean_BLV[:, :-1, :V].astype(jnp.float32), -1)  # position i predicts i + 1
        a_BL = jnp.concatenate([jnp.ones((B, 1)), jnp.minimum(q_BLV, p_BLV).sum(-1)], 1)
        return a_BL.reshape(B, L // blk, blk)[:, 1:].mean((0, 1))

    with jax.set_mesh(mesh):
        batches = eval_batches(exp, tok, mesh)[:num_batches]
        return [np.mean([np.asarray(accept(params, b["tokens"], v)) for b in batches], 0).tolist()
                for v in range(blk)]


def perfect_drafter_acceptance(ar_dir: Path, block_size: int = 4, samples: int = 64, num_batches: int = 4,
                               starts=range(16, 128, 16), seed: int = 0) -> list[float]:
    """Acceptance at block positions 0 .. block_size - 1 of the AR run's own marginals."""
    exp, graphdef, params, tok, _, _ = load_run(ar_dir)
    mesh, V, bos = make_mesh(exp.mesh), exp.model.num_tokens, exp.model.bos_input

    @jax.jit
    def probs(p, canvas_NL):
        logits = nnx.merge(graphdef, p, copy=True)(shift_right(canvas_NL, bos))
        return jax.nn.softmax(logits[..., :V].astype(jnp.float32), axis=-1)

    total, count, key = np.zeros(block_size), 0, jax.random.key(seed)
    with jax.set_mesh(mesh):
        for batch in eval_batches(exp, tok, mesh)[:num_batches]:
            tokens_BL = np.asarray(batch["tokens"])
            B = tokens_BL.shape[0]
            for s in (s for s in starts if s + block_size <= tokens_BL.shape[1]):
                canvas = jnp.repeat(jnp.asarray(tokens_BL[:, :s + block_size]), samples, axis=0)
                for k in range(block_size):
                    p_BSV = probs(params, canvas)[:, s + k].reshape(B, samples, V)  # given each continuation
                    marginal_BSV = (p_BSV.sum(1, keepdims=True) - p_BSV) / (samples - 1)  # leave-one-out
                    total[k] += float(jnp.minimum(p_BSV, marginal_BSV).sum(-1).mean(1).sum())
                    key, sub = jax.random.split(key)
                    canvas = canvas.at[:, s + k].set(
                        jax.random.categorical(sub, jnp.log(p_BSV.reshape(B * samples, V) + 1e-30)))
                count += B
    return (total / count).tolist()


def tokens_per_pass(acceptance: list[float]) -> float:
    """1 + a_1 + a_1 a_2 + ...: an ideal speculative pass's expected committed tokens."""
    return float(np.sum(np.cumprod(acceptance)))


def redraft_passes_per_token(rows: list[list[float]], num_tokens: int = 200_000, seed: int = 0) -> float:
    """Passes per token of a self-speculative block decoder, simulated from ``rows``.

    Each pass verifies the pending drafts of a block with the clean stream and drafts the
    next block (valid only if every draft is accepted; its position 0 is then exact). A
    rejection at k commits the residual sample there and costs one re-draft pass for
    positions k + 1 .. (drafted with k + 1 visible; when k is the block's last, the re-draft
    pass of the next block commits its exact position 0).
    """
    rng, C = np.random.default_rng(seed), len(rows)
    tokens = passes = 0
    start, visible, redraft = 0, 0, False
    while tokens < num_tokens:
        passes += 1
        if redraft:
            visible, redraft = start, False
            if start == 0:
                tokens, start = tokens + 1, 1
            continue
        k = start
        while k < C and rng.random() < (1.0 if k == 0 else rows[visible][k]):
            tokens, k = tokens + 1, k + 1
        if k == C:
            start, visible = 0, 0
        else:
            tokens, start, redraft = tokens + 1, (k + 1) % C, True
    return passes / tokens


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", type=Path, help="a block run (shift, causal context)")
    parser.add_argument("--ar", type=Path, help="an AR run: the ceiling of a fully masked block's drafts")
    parser.add_argument("--block_size", type=int, default=4, help="for --ar")
    parser.add_argument("--samples", type=int, default=64, help="continuations per position, for --ar")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not (args.block or args.ar):
        raise SystemExit("give --block RUN and/or --ar RUN")
    result = {}
    if args.block:
        rows = block_acceptance(args.block)
        result["block"] = {"run": str(args.block), "acceptance_by_visible": rows,
                           "ideal_tokens_per_pass": tokens_per_pass(rows[0]),
                           "redraft_passes_per_token": redraft_passes_per_token(rows)}
        for v, row in enumerate(rows):
            print(f"{args.block} visible {v}: " + " / ".join(f"{a:.3f}" for a in row))
        print(f"self-speculative decoding with re-draft passes (simulated): "
              f"{result['block']['redraft_passes_per_token']:.3f} passes per token")
    if args.ar:
        row = perfect_drafter_acceptance(args.ar, args.block_size, args.samples)
        result["perfect_drafter"] = {"run": str(args.ar), "samples": args.samples, "acceptance": row,
                                     "ideal_tokens_per_pass": tokens_per_pass(row)}
        print(f"{args.ar} perfect drafter: " + " / ".join(f"{a:.3f}" for a in row))
    for name, r in result.items():
        print(f"{name}: ideal speculative tokens per pass {r['ideal_tokens_per_pass']:.3f} "
              f"(passes per token >= {1 / r['ideal_tokens_per_pass']:.3f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
