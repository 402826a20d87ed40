"""Diffusion vs AR, side by side, in one command.

    python -m experiments.compare [--run_dir runs/compare] [--set train.steps=600 ...] \
        [--judge RUN_DIR] [--steps 8 32 128] [--temperatures 0.3 0.5 ... 1.3] [--smoke]

Trains a masked diffusion model and an AR model with the same backbone (equal parameter
count), the same corpus, tokens and step budget (``experiments.configs.quickstart`` by
default; ``--experiment lm1b`` for TFDS data on an accelerator), and a judge: a larger AR
model trained twice as long on the same corpus (or ``--judge`` names any AR run). Then
writes ``report.md`` with: validation likelihood of both (diffusion: bound with a
Monte-Carlo CI; AR: exact), the diffusion gen-ppl / entropy frontier over step rules and K
against AR sampling at several temperatures compared at matched entropy, speed
(tokens/s, compile time, NFE), and self-correction: gen ppl, entropy and the revision meter
(tokens changed, share of corrections) after n correction rounds at the middle K — plus
sweep.json/csv and plots. Re-running reuses the
finished checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from dllm_jax.checkpoint import Checkpointer
from dllm_jax.config import ExperimentConfig
from dllm_jax.evaluation.context_use import context_use, plot_context_use
from dllm_jax.evaluation.likelihood import evaluate_likelihood, utf8_bytes
from dllm_jax.evaluation.sweep import (
    ar_records,
    diffusion_records,
    matched_entropy,
    pareto_front,
    write_records,
)
from dllm_jax.nn.transformer import count_params
from dllm_jax.sampling.rules import make_rule
from dllm_jax.sharding import make_mesh
from dllm_jax.training.loop import eval_batches, load_judge, load_run, train
from experiments import configs
from experiments.cli import apply_overrides
from experiments.sweep_steps import (
    AR_TEMPERATURES,
    check_revise_args,
    parse_rule,
    quality_kwargs,
    self_correction_rows,
)


def judge_config(exp: ExperimentConfig) -> ExperimentConfig:
    """A larger AR model (1.5x width, +2 layers) trained twice as long on the same data."""
    m, t = exp.model, exp.train
    d_model = int(m.d_model * 1.5) // m.num_heads * m.num_heads
    return dataclasses.replace(
        exp, name=exp.name.replace("-ar", "") + "-judge",
        model=dataclasses.replace(m, d_model=d_model, num_layers=m.num_layers + 2, mlp_dim=3 * d_model),
        train=dataclasses.replace(t, steps=2 * t.steps),
        loop=dataclasses.replace(exp.loop, eval_every=2 * t.steps, checkpoint_every=2 * t.steps),
    )


def experiments_for(args) -> dict[str, ExperimentConfig]:
    base = configs.get(args.experiment, "masked")
    exps = {"diffusion": base, "ar": configs.get(args.experiment, "ar")}
    exps = {k: apply_overrides(v, args.set) for k, v in exps.items()}
    if not args.judge:
        exps["judge"] = apply_overrides(judge_config(exps["ar"]), args.judge_set)
    if args.smoke:
        exps = {k: configs.shrink(v) for k, v in exps.items()}
        exps["judge"] = dataclasses.replace(exps["judge"], train=dataclasses.replace(exps["judge"].train, steps=2))
    return exps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", default="runs/compare")
    parser.add_argument("--experiment", default="quickstart", choices=sorted(configs.EXPERIMENTS))
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--judge", help="an AR run directory to use as the judge (default: train one)")
    parser.add_argument("--judge_set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE",
                        help="overrides of the judge's config (default: 1.5x wider, 2 more layers, 2x steps)")
    parser.add_argument("--rules", nargs="+", default=["ancestral", "cached", "max_prob", "confidence", "threshold:threshold=0.9"])
    parser.add_argument("--steps", nargs="+", type=int, default=[8, 32, 128])
    parser.add_argument("--temperatures", nargs="+", type=float, default=AR_TEMPERATURES,
                        help="AR sampling temperatures; wide, so that every diffusion entropy has an AR match")
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--num_samples", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--time_points", type=int, default=16)
    parser.add_argument("--block_size", type=int, default=16, help="block generation with caches")
    parser.add_argument("--block_steps", type=int, default=8, help="ancestral steps per block")
    parser.add_argument("--revise_rounds", nargs="*", type=int, default=[0, 4, 16],
                        help="correction rounds after the middle K's ancestral steps (none: no self-correction rows)")
    parser.add_argument("--revise_t", type=float, default=0.1, help="noise level of each correction round")
    parser.add_argument("--smoke", action="store_true", help="tiny models, a few steps (tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.length, args.num_samples, args.batch_size, args.time_points = [2, 8], 8, 4, 2, 2
        args.block_size, args.block_steps = 4, 2
        args.temperatures = [0.8, 1.0]
        args.rules = ["ancestral", "threshold:threshold=0.9"]
        args.revise_rounds = [0, 2] if args.revise_rounds else []
    check_revise_args(parser, args)
    t0 = time.perf_counter()
    run_dir = Path(args.run_dir)
    exps = experiments_for(args)
    for name, exp in exps.items():
        print(f"\n=== train {name}: {exp.name}, {exp.train.steps} steps x {exp.train.batch_size} x {exp.train.seq_len}")
        train(exp, run_dir / name, verbose=not args.smoke)
    report = evaluate(args, run_dir)
    report["wall_s"] = time.perf_counter() - t0
    (run_dir / "report.json").write_text(json.dumps(report, indent=1))
    md = render(report)
    (run_dir / "report.md").write_text(md)
    print("\n" + md)
    return report


def evaluate(args, run_dir: Path) -> dict:
    models = {name: load_run(run_dir / name) for name in ("diffusion", "ar")}
    judge = load_judge(args.judge or run_dir / "judge")
    d_exp, d_graphdef, d_params, tok, d_obj, d_step = models["diffusion"]
    a_exp, a_graphdef, a_params, a_tok, a_obj, a_step = models["ar"]
    if a_tok.sha256 != tok.sha256:
        raise ValueError("the two runs use different tokenizers: compare them on bits/byte only")
    mesh = make_mesh(d_exp.mesh)
    batches = eval_batches(d_exp, tok, mesh)
    num_bytes = utf8_bytes(tok, batches)
    likelihood = {}
    for name, (exp, graphdef, params, _, objective, step) in models.items():
        res = evaluate_likelihood(objective, graphdef, params, batches, mesh, time_points=args.time_points, num_bytes=num_bytes)
        likelihood[name] = {**res.as_dict(), "params": count_params(params), "step": step,
                            "tokens_seen": step * exp.train.batch_size * exp.train.seq_len}
        print(f"{name}: {res.nats_per_token:.4f} ± {res.ci95:.4f} nats/token, {res.bits_per_byte:.4f} bits/byte")
    context = context_use_by_checkpoint(run_dir, models, batches, mesh)
    kw = quality_kwargs(judge, tok, d_exp.model.num_tokens)
    common = dict(length=args.length, num_samples=args.num_samples, batch_size=args.batch_size,
                  quality_kw=kw, eos_id=tok.eos_id)
    rules = dict(parse_rule(spec, d_obj) for spec in args.rules)
    print("\n=== diffusion sweep")
    diff = diffusion_records(d_graphdef, d_params, rules, args.steps, **common)
    print("=== AR temperatures")
    ar = ar_records(a_graphdef, a_params, args.temperatures, **common)
    records = matched_entropy(diff, ar) + ar
    k_mid = args.steps[len(args.steps) // 2]
    revision = self_correction_rows(d_exp, d_graphdef, d_params, d_obj, judge, ar, args, num_steps=k_mid,
                                    quality_kw=kw)
    paths = write_records(records + revision, run_dir, "sweep")
    print("=== latency at batch 1")
    one = dict(common, num_samples=2, batch_size=1)
    latency = diffusion_records(d_graphdef, d_params, {"ancestral": make_rule("ancestral", d_obj)}, [k_mid], **one)
    latency += ar_records(a_graphdef, a_params, [1.0], **one)
    print("=== block generation: approximate (dual) KV cache vs recomputation")
    blocks = block_cache_comparison(d_graphdef, d_params, make_rule("ancestral", d_obj), args, common)
    return {
        "device": f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}",
        "jax": jax.__version__, "experiment": args.experiment, "likelihood": likelihood,
        "judge": {"run": str(args.judge or run_dir / "judge"), "step": judge.step},
        "records": records, "pareto": [f"{r['rule']} K={r['num_steps']}" for r in pareto_front(records)],
        "latency": latency, "blocks": blocks, "context_use": context, "revision": revision,
        "plots": {**{k: Path(v).name for k, v in paths.items() if k.endswith("png")}, "context_use": "context_use.png"},
        "length": args.length, "num_samples": args.num_samples,
    }


def context_use_by_checkpoint(run_dir: Path, models: dict, batches, mesh) -> dict:
    """The context-use diagnostic of every saved diffusion checkpoint, and AR's reference.

    Writes ``context_use.png`` (one curve per checkpoint) and returns the curves by label.
    """
    d_exp, d_graphdef, _, _, d_obj, _ = models["diffusion"]
    ckpt = Checkpointer(run_dir / "diffusion" / "checkpoints", max_to_keep=None)
    steps = ckpt.all_steps()
    ckpt.close()
    curves = {}
    for step in steps:
        params = load_run(run_dir / "diffusion", step=step)[2]
        curves[f"diffusion step {step}"] = context_use(d_obj, d_graphdef, params, batches, mesh, seed=d_exp.train.seed)
    a_exp, a_graphdef, a_params, _, a_obj, a_step = models["ar"]
    reference = context_use(a_obj, a_graphdef, a_params, batches, mesh, times=(0.5,))
    plot_context_use(curves, run_dir / "context_use.png", reference=reference,
                     title="NLL per masked token vs t (diffusion checkpoints) against AR")
    for label, use in curves.items():
        print(f"{label}: NLL per corrupted token by t\n{use.table()}")
    return {"curves": {k: v.as_dict() for k, v in curves.items()}, "ar_nll": reference.nll[0]}


def block_cache_comparison(graphdef, params, rule, args, common) -> dict:
    """Block generation of the bidirectional diffusion model: Fast-dLLM's approximate (dual)
    cache against recomputing the canvas at every step, same keys. Returns the token
    agreement rate over generated positions and both runs' sweep records (quality, speed).
    Rows run to full length (no eos stop) so that both runs spend their passes on the same
    blocks; gen ppl is still counted up to the first eos.
    """
    num_steps = max(1, args.block_steps)
    records, samples = [], {}
    for cache in ("none", "approximate"):
        records += diffusion_records(
            graphdef, params, {f"blocks of {args.block_size}, cache={cache}": rule}, [num_steps],
            block_size=args.block_size, cache=cache, samples=samples, **dict(common, eos_id=None),
        )
    none, approx = (samples[f"blocks of {args.block_size}, cache={c}", num_steps] for c in ("none", "approximate"))
    agreement = float(np.mean(none == approx))
    print(f"approximate cache: token agreement with recomputation {agreement:.4f}")
    return {"block_size": args.block_size, "steps_per_block": num_steps, "agreement": agreement, "records": records}


def _f(x, fmt=".2f"):
    return "-" if x is None else format(x, fmt)


def render(report: dict) -> str:
    lk = report["likelihood"]
    lines = [
        f"# Diffusion vs AR ({report['experiment']}, {report['device']}, jax {report['jax']})", "",
        "## Likelihood (validation)", "",
        "| model | params | steps | tokens seen | nats/token | 95% CI | bits/token | bits/byte | ppl |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in lk.items():
        kind = "<= " if not r["exact"] else ""
        lines.append(f"| {name} | {r['params']:,} | {r['step']} | {r['tokens_seen']:,} | {r['nats_per_token']:.4f} | "
                     f"± {r['ci95']:.4f} | {r['bits_per_token']:.4f} | {_f(r['bits_per_byte'], '.4f')} | {kind}{r['perplexity']:.2f} |")
    lines += ["", "Diffusion: ELBO bound on a stratified time grid (Monte-Carlo CI over time strata); AR: exact.", "",
              f"## Sample quality and speed ({report['num_samples']} samples of {report['length']} tokens, "
              f"judge {report['judge']['run']} at step {report['judge']['step']}, gen ppl up to the first eos)", "",
              "| sampler | K | NFE | judge gen ppl | AR gen ppl at same entropy | entropy | distinct-4 | rep-4 | tokens/s | compile s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["records"]:
        lines.append(f"| {r['rule']} | {r['num_steps']} | {r['nfe']:.1f} | {_f(r['gen_ppl'])} | {_f(r.get('ar_gen_ppl_at_entropy'))} | "
                     f"{r['entropy']:.3f} | {r['distinct_4']:.3f} | {r['rep_4']:.3f} | {r['tokens_per_s']:.1f} | {r['compile_s']:.1f} |")
    ctx = report.get("context_use")
    if ctx:
        times = next(iter(ctx["curves"].values()))["times"] if ctx["curves"] else []
        lines += ["", "## Context use (NLL per masked token at noise level t; AR exact NLL "
                  f"{ctx['ar_nll']:.3f} for reference)", "",
                  "| checkpoint | " + " | ".join(f"t={t:.2f}" for t in times) + " | unigram entropy |",
                  "|---|" + "---:|" * (len(times) + 1)]
        for label, c in ctx["curves"].items():
            lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in c["nll"]) + f" | {c['unigram_entropy']:.3f} |")
    lines += ["", "Pareto front (gen ppl vs tokens/s): " + ", ".join(report["pareto"]), "",
              "## Latency at batch 1", "", "| sampler | K | NFE | time per sample s | tokens/s |", "|---|---:|---:|---:|---:|"]
    for r in report["latency"]:
        lines.append(f"| {r['rule']} | {r['num_steps']} | {r['nfe']:.1f} | {r['time_per_sample_s']:.3f} | {r['tokens_per_s']:.1f} |")
    lines += render_revision(report.get("revision"))
    blk = report.get("blocks")
    if blk:
        lines += ["", f"## Block generation (blocks of {blk['block_size']}, {blk['steps_per_block']} ancestral steps per block)", "",
                  f"Approximate (dual) KV cache vs recomputing every step, same keys: token agreement {blk['agreement']:.4f} "
                  "(the cache is exact only for a block's first step; the model is bidirectional).", "",
                  "| cache | NFE | judge gen ppl | entropy | tokens/s |", "|---|---:|---:|---:|---:|"]
        for r in blk["records"]:
            lines.append(f"| {r['rule']} | {r['nfe']:.1f} | {_f(r['gen_ppl'])} | {r['entropy']:.3f} | {r['tokens_per_s']:.1f} |")
    lines += ["", *[f"![{k}]({v})" for k, v in report["plots"].items()], ""]
    return "\n".join(lines)


def render_revision(rows) -> list[str]:
    """The self-correction table: quality and the revision meter against correction rounds."""
    if not rows:
        return []
    lines = ["", f"## Self-correction (K = {rows[0]['num_steps']} ancestral steps, then n correction rounds at "
             f"t = {rows[0]['t']:g}, one NFE each; samples run to full length)", "",
             "A correction: that one change alone lowers the judge's NLL of the sample; worsened: raises it "
             "(changes the judge scores: up to each sample's first eos).", "",
             "| rounds | NFE | judge gen ppl | AR gen ppl at same entropy | entropy | tokens changed / sample | "
             "corrections | worsened | judge NLL change / sample |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['rounds']} | {r['nfe']:.1f} | {_f(r['gen_ppl'])} | {_f(r.get('ar_gen_ppl_at_entropy'))} | "
                     f"{r['entropy']:.3f} | "
                     f"{r['changed_per_sample']:.1f} | {_f(r['correction_share'])} | {_f(r['worsened_share'])} | "
                     f"{r['delta_nll_per_sample']:+.2f} |")
    return lines


if __name__ == "__main__":
    main()
