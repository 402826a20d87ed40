"""The steps / quality / speed sweep on any diffusion checkpoint.

    python -m experiments.sweep_steps --run_dir runs/quickstart/masked --judge runs/compare/judge \
        [--rules ancestral cached max_prob threshold:threshold=0.9] [--steps 4 16 64 256 1024] \
        [--length 64] [--num_samples 64] [--batch_size 32] [--ar_run runs/quickstart/ar] \
        [--temperatures 0.3 0.5 ... 1.3] [--revise_rounds 0 4 16] [--revise_steps 32] [--out runs/sweep]

For each rule and K: judge gen ppl (up to the first eos, corpus level), unigram entropy,
distinct-n, repetition, NFE, wall-clock time (compile separately) and tokens/s; written to
sweep.json / sweep.csv and two PNG plots (quality vs steps; quality vs tokens/s with the
Pareto front). With ``--ar_run``, AR sampling at several temperatures joins the table.
With a judge and a bidirectional model, self-correction rows join too: gen ppl, entropy
and the revision meter (tokens changed, share of corrections) after n correction rounds
at K = ``--revise_steps`` ancestral steps, for each n in ``--revise_rounds`` (plotted in
sweep_revision.png; ``--revise_rounds`` with no value turns them off).
"""

from __future__ import annotations

import argparse

from dllm_jax.config import special_ids
from dllm_jax.diffusion.block import noise_process
from dllm_jax.evaluation.revision import revision_records
from dllm_jax.evaluation.sweep import ar_records, diffusion_records, matched_entropy, write_records
from dllm_jax.sampling.rules import make_rule
from dllm_jax.training.loop import load_judge, load_run

# Wide on purpose: confident rules sample at low entropy, ancestral ones at high entropy.
AR_TEMPERATURES = [0.3, 0.5, 0.7, 0.85, 1.0, 1.15, 1.3]


def parse_rule(spec: str, process):
    """``name`` or ``name:key=value,key=value`` -> (label, StepRule)."""
    name, _, opts = spec.partition(":")
    options = {}
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"bad rule option {item!r} in {spec!r}; expected key=value")
        try:
            options[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            options[key] = value
    return spec, make_rule(name, process, **options)


def check_revise_args(parser, args) -> None:
    """Refuse bad self-correction options before any training or sampling runs."""
    if any(n < 0 for n in args.revise_rounds):
        parser.error(f"--revise_rounds must be integers >= 0, got {args.revise_rounds}")
    if not 0.0 < args.revise_t < 1.0:
        parser.error(f"--revise_t must be a noise level in (0, 1), got {args.revise_t}")
    if getattr(args, "revise_steps", 1) < 1:
        parser.error(f"--revise_steps must be >= 1, got {args.revise_steps}")


def self_correction_rows(exp, graphdef, params, objective, judge, ar, args, *, num_steps: int, quality_kw: dict,
                         seed: int = 0) -> list[dict]:
    """``revision_records`` for ``args.revise_rounds`` at K = ``num_steps`` (with AR's gen ppl at
    the same entropy when ``ar`` records are given), or none, saying why, when the rounds are
    off, there is no judge or the model is not bidirectional."""
    if not args.revise_rounds:
        return []
    if judge is None:
        print("no judge: no self-correction rows (the revision meter scores changes with the judge)")
        return []
    if exp.model.attention != "bidirectional":
        print(f"a {exp.model.attention!r} model: no self-correction rows (revise needs a bidirectional model)")
        return []
    print(f"=== self-correction: correction rounds after K = {num_steps} ancestral steps")
    rows = revision_records(graphdef, params, noise_process(objective), args.revise_rounds, judge=judge,
                            num_steps=num_steps, t=args.revise_t, length=args.length, num_samples=args.num_samples,
                            batch_size=args.batch_size, quality_kw=quality_kw, seed=seed)
    return matched_entropy(rows, ar) if ar else rows


def quality_kwargs(judge, tok, num_tokens: int):
    ids = special_ids(num_tokens)
    kw = {"eos_id": tok.eos_id, "pad_id": ids.pad}
    if judge is not None:
        if judge.tokenizer.sha256 != tok.sha256:
            raise ValueError("the judge was trained with another tokenizer: it cannot score these samples")
        kw.update(judge_logits_fn=judge.logits_fn, bos_id=judge.bos_id)
    return kw


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", required=True, help="a diffusion run directory")
    parser.add_argument("--judge", help="an AR run directory scoring the samples (gen ppl)")
    parser.add_argument("--rules", nargs="+", default=["ancestral", "cached", "max_prob", "confidence", "threshold:threshold=0.9"])
    parser.add_argument("--steps", nargs="+", type=int, default=[4, 16, 64, 256, 1024])
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--num_samples", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--ar_run", help="an AR run to sample at --temperatures for comparison")
    parser.add_argument("--temperatures", nargs="+", type=float, default=AR_TEMPERATURES,
                        help="AR sampling temperatures; wide, so that every diffusion entropy has an AR match")
    parser.add_argument("--revise_rounds", nargs="*", type=int, default=[0, 4, 16],
                        help="correction rounds after --revise_steps ancestral steps (none: no revision rows)")
    parser.add_argument("--revise_steps", type=int, default=32)
    parser.add_argument("--revise_t", type=float, default=0.1, help="noise level of each correction round")
    parser.add_argument("--out", default="runs/sweep")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    check_revise_args(parser, args)
    records = sweep(args)
    paths = write_records(records, args.out)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return records


def sweep(args) -> list[dict]:
    exp, graphdef, params, tok, objective, step = load_run(args.run_dir)
    judge = load_judge(args.judge) if args.judge else None
    if judge is None:
        print("no --judge: gen ppl is not computed (entropy, distinct-n and repetition are)")
    kw = quality_kwargs(judge, tok, exp.model.num_tokens)
    rules = dict(parse_rule(spec, objective) for spec in args.rules)
    common = dict(length=args.length, num_samples=args.num_samples, batch_size=args.batch_size,
                  quality_kw=kw, seed=args.seed, eos_id=tok.eos_id)
    print(f"sweep of {args.run_dir} (step {step}): {len(rules)} rules x K in {args.steps}")
    records = diffusion_records(graphdef, params, rules, args.steps, **common)
    ar = []
    if args.ar_run:
        ar_exp, ar_graphdef, ar_params, ar_tok, _, _ = load_run(args.ar_run)
        if ar_tok.sha256 != tok.sha256:
            raise ValueError("--ar_run uses another tokenizer than --run_dir")
        ar = ar_records(ar_graphdef, ar_params, args.temperatures, **common)
        records = matched_entropy(records, ar) + ar
    records += self_correction_rows(exp, graphdef, params, objective, judge, ar, args, num_steps=args.revise_steps,
                                    quality_kw=kw, seed=args.seed)
    return records


if __name__ == "__main__":
    main()
