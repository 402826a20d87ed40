"""Block diffusion (BD3-LM) and AR adaptation at the quickstart budget, beside AR.

Every run reads the same training tokens (2400 steps x 4 x 128 = 1.23M, the quickstart's
budget) from the embedded corpus and reports its validation bound (nats per token; AR's is
exact). Adapted runs spend half the budget as AR (``ar_half``; ``ar_3q``, ``ar_7e``: 3/4, 7/8) and the rest as diffusion
initialised from it (``TrainConfig.init_from``), so their total equals the AR run's.

    python -m experiments.block_study                  # every variant, in order
    python -m experiments.block_study --only ar block4
    python -m experiments.block_study --report         # table from saved records

Runs are kept under ``--runs`` (a finished run is read back, not retrained); the table and
``results.json`` go to ``--out`` (default ``benchmarks/block``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dllm_jax.config import ExperimentConfig
from dllm_jax.diffusion import shift_right, token_nll
from dllm_jax.evaluation import stratified_likelihood
from dllm_jax.evaluation.eval_step import make_eval_step
from dllm_jax.sharding import make_mesh
from dllm_jax.training.loop import eval_batches, load_run, train
from experiments import configs

STEPS = 2400
HALF = STEPS // 2


def block(block_size: int, *, shift: bool = True) -> ExperimentConfig:
    return configs.quickstart_block(block_size, shift=shift, name=f"block{block_size}")


def adapted(runs: Path, name: str, *, block_size: int | None, shift: bool, lr: float = 1e-3,
            init: str = "ar_half", steps: int = HALF, context: str = "block_causal",
            context_ar: float = 0.0) -> ExperimentConfig:
    """Diffusion initialised from the run ``init`` (half the budget of AR by default)."""
    return configs.quickstart_adapted(str(runs / init), block_size, shift=shift, steps=steps, lr=lr,
                                      context_attention=context, context_ar_weight=context_ar, name=name)


def context_ar(runs: Path, name: str, init: str, steps: int, weight: float = 1.0,
               lr: float = 1e-3, block_size: int = 4, **noise) -> ExperimentConfig:
    """Block ``block_size`` adapted from ``init`` with a causal context keeping the AR loss at
    ``weight``; ``noise`` overrides other ``NoiseConfig`` fields (``context_distill``, times)."""
    exp = adapted(runs, name, block_size=block_size, shift=True, init=init, steps=steps, lr=lr,
                  context="causal", context_ar=weight)
    return dataclasses.replace(exp, noise=dataclasses.replace(exp.noise, **noise))


def sized(exp: ExperimentConfig, d_model: int, num_layers: int = 4) -> ExperimentConfig:
    """``exp`` with another width (heads of 32, MLP 3x) and depth; the same tokens."""
    model = dataclasses.replace(exp.model, d_model=d_model, num_heads=d_model // 32, mlp_dim=3 * d_model,
                                num_layers=num_layers)
    return dataclasses.replace(exp, model=model)


def scaled(runs: Path, tag: str, d_model: int, num_layers: int = 4) -> dict[str, ExperimentConfig]:
    """AR, its 7/8 phase and the w = 1 block-4 adaptation at equal tokens, at another size."""
    return {f"ar_{tag}": sized(configs.quickstart("ar"), d_model, num_layers),
            f"ar_7e_{tag}": sized(configs.quickstart_ar_phase(7 * STEPS // 8), d_model, num_layers),
            f"adapt_block4_after_7e_ctxar_{tag}": sized(
                context_ar(runs, f"adapt_block4_after_7e_ctxar_{tag}", f"ar_7e_{tag}", STEPS // 8), d_model,
                num_layers)}


def variants(runs: Path) -> dict[str, ExperimentConfig]:
    return {
        "ar": configs.quickstart("ar"),
        "full": configs.quickstart("masked"),
        "block4": block(4),
        "block16": block(16),
        "ar_half": configs.quickstart_ar_phase(HALF),
        "adapt_block4": adapted(runs, "adapt_block4", block_size=4, shift=True),
        "adapt_block4_noshift": adapted(runs, "adapt_block4_noshift", block_size=4, shift=False),
        "adapt_block16": adapted(runs, "adapt_block16", block_size=16, shift=True),
        "adapt_full": adapted(runs, "adapt_full", block_size=None, shift=True),
        # Fast-dLLM v2: the clean context stays causal (the AR model's own attention)
        "adapt_block4_causal_context": adapted(runs, "adapt_block4_causal_context", block_size=4, shift=True,
                                               context="causal"),
        "adapt_block4_lr3e-3": adapted(runs, "adapt_block4_lr3e-3", block_size=4, shift=True, lr=3e-3),
        # 4x the budget (4.9M tokens): AR 4800 steps, then block 4 for 4800 (AR at 4x: benchmarks/learning)
        "ar_half_x4": configs.quickstart_ar_phase(4 * HALF),
        "adapt_block4_x4": adapted(runs, "adapt_block4_x4", block_size=4, shift=True, init="ar_half_x4",
                                   steps=4 * HALF),
        # The split of the budget: AR for 3/4 (7/8) of it, block 4 for the rest
        "ar_3q": configs.quickstart_ar_phase(3 * STEPS // 4),
        "adapt_block4_after_3q": adapted(runs, "adapt_block4_after_3q", block_size=4, shift=True, init="ar_3q",
                                         steps=STEPS // 4),
        "ar_7e": configs.quickstart_ar_phase(7 * STEPS // 8),
        "adapt_block4_after_7e": adapted(runs, "adapt_block4_after_7e", block_size=4, shift=True, init="ar_7e",
                                         steps=STEPS // 8),
        # a causal context that keeps its AR loss (weight w): weights, lrs and splits, and w = 0
        **{name: context_ar(runs, name, init, steps, w, lr) for name, init, steps, w, lr in (
            ("adapt_block4_after_7e_ctxar", "ar_7e", STEPS // 8, 1.0, 1e-3),
            ("adapt_block4_after_7e_ctxar_q", "ar_7e", STEPS // 8, 0.25, 1e-3),
            ("adapt_block4_after_7e_ctxar_3", "ar_7e", STEPS // 8, 3.0, 1e-3),
            ("adapt_block4_after_7e_ctxar_lr3e-4", "ar_7e", STEPS // 8, 1.0, 3e-4),
            ("adapt_block4_after_7e_ctxar_lr1e-4", "ar_7e", STEPS // 8, 1.0, 1e-4),
            ("adapt_block4_after_3q_ctxar", "ar_3q", STEPS // 4, 1.0, 1e-3),
        )},
        "ar_15s": configs.quickstart_ar_phase(15 * STEPS // 16),
        "adapt_block4_after_15s_ctxar": context_ar(runs, "adapt_block4_after_15s_ctxar", "ar_15s", STEPS // 16),
        "adapt_block4_after_7e_causal": context_ar(runs, "adapt_block4_after_7e_causal", "ar_7e", STEPS // 8, 0.0),
        # the masked targets partly (wholly) from the clean stream's AR predictions
        **{name: context_ar(runs, name, "ar_7e", STEPS // 8, context_distill=a) for name, a in (
            ("adapt_block4_after_7e_distill_h", 0.5), ("adapt_block4_after_7e_distill", 1.0))},
        # the training-time distribution and weighting of the w = 1 recipe (logit-normal, ELBO)
        **{f"adapt_block4_after_7e_ctxar_{tag}": context_ar(runs, f"adapt_block4_after_7e_ctxar_{tag}", "ar_7e",
                                                             STEPS // 8, **noise) for tag, noise in (
            ("uniform", dict(time_distribution="uniform")),
            ("clip30_80", dict(time_distribution="uniform", t_low=0.3, t_high=0.8)),
            ("clip45_95", dict(time_distribution="uniform", t_low=0.45, t_high=0.95)),
            ("flat", dict(weighting="flat")))},
        # the block size of the w = 1 recipe (128 = the sequence: the full-sequence objective)
        **{f"adapt_block{b}_after_7e_ctxar": context_ar(runs, f"adapt_block{b}_after_7e_ctxar", "ar_7e", STEPS // 8,
                                                        block_size=b) for b in (2, 8, 16, 128)},
        # staggered clocks inside the block (reveal order biased left to right; 1 = AR in the block)
        **{f"adapt_block4_after_7e_ctxar_stagger{round(100 * g)}": context_ar(
            runs, f"adapt_block4_after_7e_ctxar_stagger{round(100 * g)}", "ar_7e", STEPS // 8, block_stagger=g)
           for g in (0.25, 0.5, 0.75, 1.0)},
        # model size at the same tokens: half and twice the quickstart's width
        **scaled(runs, "d64", 64), **scaled(runs, "d256", 256),
        # 4x the tokens at the quickstart's size, the same 7/8 split and context AR loss
        "ar_x4": configs.quickstart_ar_phase(4 * STEPS),
        "ar_7e_x4": configs.quickstart_ar_phase(4 * 7 * STEPS // 8),
        "adapt_block4_after_7e_ctxar_x4": context_ar(runs, "adapt_block4_after_7e_ctxar_x4", "ar_7e_x4", STEPS // 2),
        # AR -> block 2 -> block 4, the adaptation half split in two phases
        "phase_b2": adapted(runs, "phase_b2", block_size=2, shift=True, steps=HALF // 2),
        "phase_b2_b4": adapted(runs, "phase_b2_b4", block_size=4, shift=True, init="phase_b2", steps=HALF // 2),
    }


def run_one(name: str, exp: ExperimentConfig, runs: Path) -> dict:
    run_dir = runs / name
    record_file = run_dir / "record.json"
    if record_file.exists():
        return json.loads(record_file.read_text())
    t0 = time.perf_counter()
    result = train(exp, run_dir, verbose=False)
    record = {
        "name": name, "process": exp.noise.process, "attention": exp.model.attention,
        "block_size": exp.model.block_size if exp.model.attention == "block_causal" else None,
        "shift": exp.model.shift, "init_from": exp.train.init_from, "steps": exp.train.steps,
        "tokens": exp.train.steps * exp.train.batch_size * exp.train.seq_len,
        "val_loss": result["val_loss"], "val_ppl": result["val_ppl"],
        "nll_t0.10": result.get("nll_t0.10"), "wall_seconds": time.perf_counter() - t0,
        "train_tokens_per_second": result["tokens_per_second"],
        "samples": {str(k): v for k, v in result["samples"].items()},
    }
    if exp.model.attention == "block_causal":
        record["position_nll_t1"] = position_nll(run_dir)
    record_file.write_text(json.dumps(record, indent=1))
    return record


def masked_block_sums(exp, graphdef, params, batches, visibles) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per block position: (sum of NLLs, scored tokens) over ``batches``, each block given the
    clean past with its first v positions shown and the rest masked, for each v in
    ``visibles`` (one compile for all of them)."""
    blk, mask_id = exp.model.block_size, exp.model.special.mask

    @jax.jit
    def sums(p, tokens_BL, mask_BL, visible):
        B, L = tokens_BL.shape
        shown_BL = jnp.where(jnp.arange(L) % blk >= visible, mask_id, tokens_BL)
        logits = nnx.merge(graphdef, p, copy=True)(shown_BL, None, clean_BL=tokens_BL)
        per_BL = jnp.where(mask_BL, token_nll(logits, tokens_BL, exp.model.num_tokens), 0.0)
        return per_BL.reshape(B, L // blk, blk).sum((0, 1)), mask_BL.reshape(B, L // blk, blk).sum((0, 1))

    out = {v: (np.zeros(blk), np.zeros(blk)) for v in visibles}
    for batch in batches:
        for v in visibles:
            s, c = sums(params, batch["tokens"], batch["loss_mask"], v)
            out[v] = (out[v][0] + np.asarray(s), out[v][1] + np.asarray(c))
    return out


def position_nll(run_dir: Path, num_batches: int = 8) -> list[float]:
    """NLL of each position of a block (nats), every block fully masked, given the clean past.

    The t = 1 end of the block bound: position 0 is the AR prediction of the block's first
    token (for a shift model, from the clean position before it); position i must predict
    i tokens ahead with nothing of its own block visible.
    """
    exp, graphdef, params, tok, _, _ = load_run(run_dir)
    mesh = make_mesh(exp.mesh)
    with jax.set_mesh(mesh):
        total, count = masked_block_sums(exp, graphdef, params, eval_batches(exp, tok, mesh)[:num_batches], [0])[0]
    return [float(x) for x in total / count]


def ar_lookahead_nll(run_dir: Path, block_size: int = 4, starts=range(16, 128, 16), samples: int = 64,
                     num_batches: int = 4, seed: int = 0) -> list[float]:
    """The AR run's own NLL of token s + k given x_{<s} (k = 0 .. block_size - 1), the
    tokens between marginalised by sampling: p(x_{s+k} | x_{<s}) ~ mean over ``samples``
    ancestral continuations y_s .. y_{s+k-1} of p(x_{s+k} | x_{<s}, y). What a block
    denoiser that knew what the AR model knows would score at t = 1 (position k of a block);
    the Monte Carlo estimate of -log p is biased upwards (Jensen), so these are upper bounds.
    """
    exp, graphdef, params, tok, _, _ = load_run(run_dir)
    mesh, V, bos = make_mesh(exp.mesh), exp.model.num_tokens, exp.model.bos_input

    @jax.jit
    def logp(p, canvas_NL):  # log p(x_i | x_{<i}) over the ordinary tokens, (N, L, V)
        logits = nnx.merge(graphdef, p, copy=True)(shift_right(canvas_NL, bos))
        return jax.nn.log_softmax(logits[..., :V].astype(jnp.float32), axis=-1)

    totals, count = np.zeros(block_size), 0
    key = jax.random.key(seed)
    with jax.set_mesh(mesh):
        for batch in eval_batches(exp, tok, mesh)[:num_batches]:
            tokens_BL = np.asarray(batch["tokens"])
            for s in starts:
                if s + block_size > tokens_BL.shape[1]:
                    continue
                canvas = jnp.repeat(jnp.asarray(tokens_BL[:, :s + block_size]), samples, axis=0)  # (B * S, s + blk)
                for k in range(block_size):  # y_{s+k} ~ p(. | x_{<s}, y_s .. y_{s+k-1})
                    key, sub = jax.random.split(key)
                    lp = logp(params, canvas)
                    truth = jnp.repeat(jnp.asarray(tokens_BL[:, s + k]), samples)
                    p_k = jnp.exp(jnp.take_along_axis(lp[:, s + k], truth[:, None], axis=-1)[:, 0])
                    totals[k] -= float(jnp.sum(jnp.log(p_k.reshape(-1, samples).mean(axis=1))))
                    canvas = canvas.at[:, s + k].set(jax.random.categorical(sub, lp[:, s + k]))
                count += tokens_BL.shape[0]
    return [float(x) for x in totals / count]


def staggered_bounds(run_dir: Path, staggers=(0.0, 0.25, 0.5, 0.75, 1.0), time_points: int | None = None,
                     with_ci: bool = False, left_to_right: bool = False) -> dict:
    """A masked block run's validation bound (nats per token) under each stagger of the
    clocks: the same network, the generative processes that reveal its blocks in orders
    biased left to right by that much (the evaluation of training, with the stagger swapped;
    ``time_points`` strata, default the run's). ``with_ci``: (bound, 95% CI half-width) each.
    A position is scored only in its clock's window (1 / (1 + g (C - 1)) of t): at large
    blocks and g the estimate needs many more time points than g = 0 does.

    ``left_to_right``: also ``"left_to_right"``, the stagger-1 bound exactly: position k of
    each block scored with positions < k shown, >= k masked (no time or mask sampling)."""
    exp, graphdef, params, tok, objective, _ = load_run(run_dir)
    mesh = make_mesh(exp.mesh)
    batches = eval_batches(exp, tok, mesh)
    out = {}
    for g in staggers:
        eval_fn = make_eval_step(dataclasses.replace(objective, stagger=g), graphdef, mesh, seed=exp.train.seed)
        r = stratified_likelihood(eval_fn, params, batches, time_points or exp.loop.eval_time_points)
        out[f"{g:g}"] = (r.nats_per_token, r.ci95) if with_ci else r.nats_per_token
    if left_to_right:
        with jax.set_mesh(mesh):
            sums = masked_block_sums(exp, graphdef, params, batches, range(exp.model.block_size))
        out["left_to_right"] = float(sum(s[k] for k, (s, _) in sums.items()) / sum(c[k] for k, (_, c) in sums.items()))
    return out


def report(records: dict[str, dict], out: Path) -> str:
    """The table; ratios against ``ar`` (``ar_<size>`` for a run named ``..._<size>``)."""
    lines = ["| run | attention | block | shift | init | data tokens | bound (nats) | ppl | ppl / AR ppl | "
             "NLL@t=0.1 | NLL by position in block at t=1 | train wall (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in records.items():
        tokens, parent = r["tokens"], r["init_from"]
        while parent:  # the tokens of every phase before this one
            before = records.get(Path(parent).name)
            if before is None:
                break
            tokens, parent = tokens + before["tokens"], before["init_from"]
        size = name.rsplit("_", 1)[-1]
        ar = records.get(f"ar_{size}" if f"ar_{size}" in records and f"ar_7e_{size}" in records else "ar")
        same = ar is not None and tokens == ar["tokens"]  # a ratio only at equal tokens
        ratio = f"{math.exp(r['val_loss'] - ar['val_loss']):.2f}x" if same else "-"
        lines.append(f"| {name} | {r['attention']} | {r['block_size'] or '-'} | {r['shift']} | "
                     f"{Path(r['init_from']).name if r['init_from'] else '-'} | {tokens:,} | {r['val_loss']:.3f} | "
                     f"{r['val_ppl']:.1f} | {ratio} | {_f(r.get('nll_t0.10'))} | {positions(r)} | "
                     f"{r['wall_seconds']:.0f} |")
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(records, indent=1))
    (out / "results.md").write_text(table + "\n")
    return table


def _f(x):
    return "-" if x is None else f"{x:.3f}"


def positions(r: dict) -> str:
    nll = r.get("position_nll_t1")
    if not nll:
        return "-"
    shown = nll if len(nll) <= 4 else nll[:2] + nll[-1:]
    return " / ".join(f"{x:.2f}" for x in shown) + (" (first, second, last)" if len(nll) > 4 else "")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/block")
    parser.add_argument("--out", default="benchmarks/block")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--backfill", action="store_true", help="add position_nll_t1 to block records that lack it")
    parser.add_argument("--lookahead", metavar="AR_RUN", help="print (and save to --out) the AR run's own NLL "
                        "of each block position at t = 1, the intermediate tokens marginalised, then exit")
    parser.add_argument("--rebound", nargs="+", metavar="RUN", help="print (and save to --out) each block "
                        "run's bound under staggers 0 .. 1 of its clocks (with 95%% CIs), then exit")
    parser.add_argument("--time_points", type=int, help="--rebound's time strata (default: the run's)")
    args = parser.parse_args(argv)
    if args.rebound:
        bounds = {}
        for run in args.rebound:
            b = bounds[run] = staggered_bounds(Path(run), time_points=args.time_points, with_ci=True,
                                               left_to_right=True)
            shown = " / ".join(f"{g}: {x:.3f} +- {ci:.3f}" for g, (x, ci) in b.items() if g != "left_to_right")
            print(f"{run}: bound by stagger {shown} | left to right, exactly (= stagger 1): "
                  f"{b['left_to_right']:.3f}", flush=True)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "rebound.json").write_text(json.dumps(bounds, indent=1))
        return
    if args.lookahead:
        nll = ar_lookahead_nll(Path(args.lookahead))
        print(f"{args.lookahead}: NLL of token s + k given x_<s, k = 0..{len(nll) - 1}: "
              + " / ".join(f"{x:.3f}" for x in nll))
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "lookahead.json").write_text(json.dumps({"run": args.lookahead, "nll": nll}, indent=1))
        return
    runs = Path(args.runs)
    table = variants(runs)
    names = args.only or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; expected some of {list(table)}")
    if not args.report:
        for name in names:  # in the order given (adaptations need ar_half first)
            r = run_one(name, table[name], runs)
            print(f"{name:22s} bound {r['val_loss']:.3f} (ppl {r['val_ppl']:.1f}) | {r['wall_seconds']:.0f}s", flush=True)
    saved_file = Path(args.out) / "results.json"  # runs not kept here keep their saved records
    saved = json.loads(saved_file.read_text()) if saved_file.exists() else {}
    local = {n: json.loads((runs / n / "record.json").read_text()) for n in table
             if (runs / n / "record.json").exists()}
    records = {n: local.get(n, saved.get(n)) for n in table if n in local or n in saved}
    if args.backfill:
        for n, r in local.items():
            if r["attention"] == "block_causal" and "position_nll_t1" not in r:
                r["position_nll_t1"] = position_nll(runs / n)
                (runs / n / "record.json").write_text(json.dumps(r, indent=1))
    print(report(records, Path(args.out)))


if __name__ == "__main__":
    main()
