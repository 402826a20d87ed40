"""Self-correction on real text: does a model fix what it wrote, and can it edit given text?

For each run (a masked, uniform or hybrid quickstart model):

1. Sample ``--samples`` unprompted rows with K ancestral steps (or K steps of ``--rule``,
   e.g. ReMDM), then run n correction
   rounds (``dllm_jax.sampling.revise``: renoise to t, one exact step back) for each n in
   ``--rounds``; report gen ppl (AR judge), unigram entropy, NFE, the number of tokens
   the rounds changed, and the share of changes that are corrections: changing that one
   token of the K-step sample lowers the judge's NLL of the sequence.
2. The ``revise`` demo: held-out text with ``--corrupt`` of its tokens replaced by random
   tokens; the share of corrupted positions restored to the original token, against the
   share of clean positions broken.

    python -m experiments.revision_study --run masked=runs/revision/masked \\
        --run hybrid02=runs/revision/hybrid02 --judge runs/learning/ar_batch4_lr_3e-3_wd_0.1_alibi-x1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dllm_jax.data.corpus import make_source
from dllm_jax.diffusion import noise_process
from dllm_jax.evaluation.revision import revision_records
from dllm_jax.evaluation.sweep import plot_revisions
from dllm_jax.sampling import Logits, revise
from dllm_jax.training.run_dir import load_judge, load_run
from experiments.sweep_steps import parse_rule


def held_out_rows(exp, tok, num_rows: int, length: int) -> np.ndarray:
    ids = []
    for doc in make_source(exp.data.source, "validation"):
        ids.extend(tok.encode(doc))
        if len(ids) >= num_rows * length:
            break
    return np.asarray(ids[: num_rows * length], np.int32).reshape(num_rows, length)


def last_bound(run_dir) -> float | None:
    """The run's last validation bound (nats/token) from its metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    values = [json.loads(line).get("val_loss") for line in path.read_text().splitlines()] if path.exists() else []
    values = [v for v in values if v is not None]
    return values[-1] if values else None


def study_run(name, run_dir, judge, args) -> dict:
    exp, graphdef, params, tok, objective, step = load_run(run_dir)
    if judge.tokenizer.sha256 != tok.sha256:
        raise ValueError(f"the judge's tokenizer differs from {run_dir}'s")
    process = noise_process(objective)
    length = args.length
    quality_kw = {"eos_id": None, "pad_id": None, "judge_logits_fn": judge.logits_fn, "bos_id": judge.bos_id}
    rows = revision_records(graphdef, params, process, args.rounds, judge=judge, num_steps=args.steps, length=length,
                            num_samples=args.samples, batch_size=args.samples, quality_kw=quality_kw, t=args.t,
                            seed=args.seed, logits=Logits(temperature=args.temperature), label=name,
                            rule=parse_rule(args.rule, process)[1] if args.rule else None)
    clean = held_out_rows(exp, tok, args.samples, length)
    rng = np.random.default_rng(args.seed)
    hit = rng.uniform(size=clean.shape) < args.corrupt
    noisy = np.where(hit, (clean + rng.integers(1, process.num_tokens, clean.shape)) % process.num_tokens, clean)
    demo = []
    for n in args.demo_rounds:
        fixed = revise(graphdef, params, noisy, process, rounds=n, t=args.t, seed=args.seed + 2).tokens
        restored = float(np.mean(fixed[hit] == clean[hit]))
        broken = float(np.mean(fixed[~hit] != clean[~hit]))
        demo.append({"rounds": n, "restored": restored, "broken": broken})
        print(f"  {name} revise demo, {n} rounds at t={args.t}: restored {restored:.3f} of corrupted, broke "
              f"{broken:.3f} of clean", flush=True)
    example = {"corrupted": tok.decode(noisy[0].tolist()), "revised": tok.decode(fixed[0].tolist()),
               "original": tok.decode(clean[0].tolist())}
    return {"run": name, "run_dir": str(run_dir), "step": step, "process": exp.noise.process,
            "p_uniform": exp.noise.p_uniform, "val_loss": last_bound(run_dir), "sampling": rows, "demo": demo, "example": example}


def write_report(records, args, out: Path):
    lines = ["# Self-correction on real text", "",
             f"Command: `python -m experiments.revision_study {' '.join(args.argv)}`", "",
             f"{args.samples} unprompted samples of {args.length} tokens, K = {args.steps} steps of "
             f"{args.rule or f'ancestral (temperature {args.temperature})'}, then n "
             f"correction rounds at t = {args.t} (1 NFE each); judge: `{args.judge}`. A correction: that one "
             "change alone lowers the judge's NLL of the sample.", "",
             "| run | bound (nats) | rounds | NFE | gen ppl | entropy | tokens changed / sample | corrections |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        bound = "–" if r["val_loss"] is None else f"{r['val_loss']:.3f}"
        for s in r["sampling"]:
            share = "–" if s["correction_share"] is None else f"{s['correction_share']:.2f}"
            lines.append(f"| {r['run']} | {bound} | {s['rounds']} | {s['nfe']:.0f} | {s['gen_ppl']:.1f} | "
                         f"{s['entropy']:.3f} | {s['changed_per_sample']:.1f} | {share} |")
    lines += ["", f"`revise` demo: held-out text, {args.corrupt:.0%} of tokens replaced by random tokens.", "",
              "| run | rounds | corrupted restored | clean broken |", "|---|---|---|---|"]
    for r in records:
        for d in r["demo"]:
            lines.append(f"| {r['run']} | {d['rounds']} | {d['restored']:.3f} | {d['broken']:.3f} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(records, indent=1))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot_revisions([s for r in records for s in r["sampling"]], out, "results")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=RUN_DIR (repeat)")
    parser.add_argument("--judge", required=True, help="an AR run directory with the same tokenizer")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, nargs="+", default=[0, 4, 16])
    parser.add_argument("--demo_rounds", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--t", type=float, default=0.1)
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="of the K ancestral steps (e.g. to match another model's entropy)")
    parser.add_argument("--rule", help="the K steps' rule instead of ancestral, e.g. remdm:schedule=cap,eta=0.02 "
                        "(sweep_steps' syntax; --temperature then does not apply)")
    parser.add_argument("--corrupt", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/revision")
    args = parser.parse_args(argv)
    if args.rule and args.temperature != 1.0:
        parser.error(f"--temperature {args.temperature} applies to the ancestral steps only, not to --rule {args.rule}")
    args.argv = argv if argv is not None else __import__("sys").argv[1:]
    judge = load_judge(args.judge)
    t0 = time.perf_counter()
    records = [study_run(*spec.split("=", 1), judge, args) for spec in args.run]
    write_report(records, args, Path(args.out))
    print(f"wrote {args.out}/results.md in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
