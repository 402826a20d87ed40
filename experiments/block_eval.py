"""Speed and sample quality of a block diffusion model beside its AR model, in one run.

* threshold decoding (Fast-dLLM: every draw above the threshold is kept, at least the
  schedule's floor), with K = block size and K = block size / 2 steps per block, against one
  token per step (confidence order, K = block size), all block by block with the exact KV
  cache: network passes per generated token (the cache's
  write of each finished block counted) and gen ppl under a judge;
* AR KV-cache decoding at several temperatures, and AR gen ppl interpolated at the
  diffusion samples' entropy (``matched_entropy``);
* tokens/s at batch 1 for ``--length`` new tokens, diffusion (threshold) and AR measured
  back to back in this process;
* ``--ancestral K ...``: the model's own ancestral sampler (``sampling.ancestral``, the
  staggered clocks of a ``block_stagger`` model, or ``--stagger``'s) at K steps per block.

    python -m experiments.block_eval --diffusion runs/block/adapt_block16 --ar runs/block/ar \\
        [--judge RUN] [--out benchmarks/block/speed_adapt_block16.json]

The judge defaults to the AR run itself (it then favours its own samples: AR's gen ppl is
an optimistic reference).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import jax

from dllm_jax.evaluation.sweep import ar_records, diffusion_records, matched_entropy
from dllm_jax.sampling import ancestral, make_rule
from dllm_jax.training.loop import load_judge, load_run
from experiments.sweep_steps import quality_kwargs

# Up to 1.5: the adapted block models sample at a higher entropy than AR at T = 1.2.
AR_TEMPERATURES = (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5)
# Down to 0.1: at the quickstart's scale even 0.5 lets a second token through in under 1% of
# passes (benchmarks/block, "context AR loss").
THRESHOLDS = (0.9, 0.5, 0.1)


def speed_and_quality(diffusion_dir, ar_dir, *, judge_dir=None, length: int = 128, num_samples: int = 32,
                      batch_size: int = 16, thresholds=THRESHOLDS, temperatures=AR_TEMPERATURES,
                      timing_samples: int = 4, tolerance: float = 0.10, ancestral_steps=(), stagger=None,
                      log=print) -> dict:
    """The records and a summary. The summary's threshold is the one with the fewest passes
    per token whose gen ppl is within ``tolerance`` of one token per step (the highest
    threshold if none is); batch-1 speed is measured with it."""
    d_exp, d_graphdef, d_params, tok, d_obj, _ = load_run(diffusion_dir)
    a_exp, a_graphdef, a_params, a_tok, _, _ = load_run(ar_dir)
    if a_tok.sha256 != tok.sha256:
        raise ValueError(f"{diffusion_dir} and {ar_dir} use different tokenizers")
    blk = d_exp.model.block_size
    if d_exp.model.attention != "block_causal":
        raise ValueError(f"{diffusion_dir} is not a block diffusion model (attention {d_exp.model.attention!r})")
    length = (length // blk) * blk
    judge = load_judge(judge_dir or ar_dir)
    kw = quality_kwargs(judge, tok, d_exp.model.num_tokens)
    common = dict(length=length, quality_kw=kw, eos_id=None)  # full length: equal work per row
    rules = {"one token per step": make_rule("confidence", d_obj),
             **{rules_key(th): make_rule("threshold", d_obj, threshold=th) for th in thresholds}}
    log(f"=== block diffusion ({diffusion_dir}, blocks of {blk}, exact cache): {num_samples} samples of {length} tokens")
    diff = diffusion_records(d_graphdef, d_params, rules, [blk], num_samples=num_samples, batch_size=batch_size,
                             block_size=blk, cache="exact", log=log, **common)
    if blk > 1:  # fewer steps than tokens per block: the threshold's floor unmasks several per step
        diff += diffusion_records(d_graphdef, d_params, {k: v for k, v in rules.items() if k != "one token per step"},
                                  [blk // 2], num_samples=num_samples, batch_size=batch_size, block_size=blk,
                                  cache="exact", log=log, **common)
    a_obj = d_obj if stagger is None else dataclasses.replace(d_obj, stagger=stagger)
    anc = diffusion_records(d_graphdef, d_params, {"ancestral": ancestral(a_obj)}, list(ancestral_steps),
                            num_samples=num_samples, batch_size=batch_size, block_size=blk, cache="exact", log=log,
                            **common) if ancestral_steps else []
    log(f"=== AR ({ar_dir}) with its KV cache, temperatures {list(temperatures)}")
    ar = ar_records(a_graphdef, a_params, temperatures, num_samples=num_samples, batch_size=batch_size, log=log,
                    **common)
    diff, anc = matched_entropy(diff, ar), matched_entropy(anc, ar)
    for r in diff + anc:
        r["passes_per_token"] = r["nfe"] / length
    base, fits = diff[0], [r for r in diff[1:] if r["gen_ppl"] <= (1 + tolerance) * diff[0]["gen_ppl"]]
    thr = min(fits, key=lambda r: r["passes_per_token"]) if fits else diff[1]
    log(f"=== batch 1, {length} new tokens: {thr['rule']} vs AR KV-cache decoding, back to back")
    one = dict(common, num_samples=timing_samples, batch_size=1)
    fast = diffusion_records(d_graphdef, d_params, {thr["rule"]: rules[thr["rule"]]}, [thr["num_steps"]],
                             block_size=blk, cache="exact", log=log, **one)[0]
    ar_one = ar_records(a_graphdef, a_params, [1.0], log=log, **one)[0]
    summary = _summary(blk, length, thr, base, fast, ar_one, bool(fits))
    log(f"{thr['rule']}, K={thr['num_steps']} per block: {summary['threshold_passes_per_token']:.3f} passes per token (one per step "
        f"{summary['one_per_step_passes_per_token']:.3f}) | gen ppl {thr['gen_ppl']:.1f} vs {base['gen_ppl']:.1f} "
        f"({100 * summary['gen_ppl_change']:+.1f}%) | AR gen ppl at the same entropy "
        f"{_f(thr['ar_gen_ppl_at_entropy'])} | batch-1 tokens/s {fast['tokens_per_s']:.0f} vs AR "
        f"{ar_one['tokens_per_s']:.0f} ({summary['batch1_speed_ratio']:.2f}x)")
    device = jax.devices()[0]
    return {"device": f"{device.platform}:{device.device_kind}", "jax": jax.__version__,
            "diffusion": str(diffusion_dir), "ar": str(ar_dir), "judge": str(judge_dir or ar_dir),
            "summary": summary, "diffusion_records": diff, "ancestral_records": anc, "ar_records": ar,
            "batch1": [fast, ar_one]}


def _summary(blk, length, thr, base, fast, ar_one, within_tolerance: bool) -> dict:
    """The summary of ``speed_and_quality``: the chosen threshold vs one token per step, and
    batch-1 speed vs AR."""
    return {
        "block_size": blk, "length": length, "threshold_rule": thr["rule"], "steps_per_block": thr["num_steps"],
        "within_tolerance": within_tolerance,
        "threshold_passes_per_token": thr["passes_per_token"],
        "one_per_step_passes_per_token": base["passes_per_token"],
        "threshold_gen_ppl": thr["gen_ppl"], "one_per_step_gen_ppl": base["gen_ppl"],
        "gen_ppl_change": thr["gen_ppl"] / base["gen_ppl"] - 1.0,
        "threshold_entropy": thr["entropy"], "ar_gen_ppl_at_threshold_entropy": thr["ar_gen_ppl_at_entropy"],
        "batch1_tokens_per_s": fast["tokens_per_s"], "ar_batch1_tokens_per_s": ar_one["tokens_per_s"],
        "batch1_speed_ratio": fast["tokens_per_s"] / ar_one["tokens_per_s"],
    }


def rules_key(threshold: float) -> str:
    return f"threshold {threshold:g}"


def _f(x):
    return "-" if x is None else f"{x:.1f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diffusion", required=True, help="a block diffusion run directory")
    parser.add_argument("--ar", required=True, help="the AR run directory (same tokenizer)")
    parser.add_argument("--judge", help="the run that scores samples (default: --ar)")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--num_samples", type=int, default=32)
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS))
    parser.add_argument("--temperatures", type=float, nargs="+", default=list(AR_TEMPERATURES),
                        help="AR sampling temperatures (AR gen ppl is interpolated at the diffusion entropy)")
    parser.add_argument("--ancestral", type=int, nargs="*", default=[],
                        help="also sample with the model's ancestral rule at these steps per block")
    parser.add_argument("--stagger", type=float, help="the ancestral rule's clocks at this stagger instead of "
                        "the model's own (NoiseConfig.block_stagger)")
    parser.add_argument("--out", help="write the records here as JSON")
    args = parser.parse_args(argv)
    result = speed_and_quality(args.diffusion, args.ar, judge_dir=args.judge, length=args.length,
                               num_samples=args.num_samples, batch_size=min(args.num_samples, 16),
                               thresholds=args.thresholds, temperatures=args.temperatures,
                               ancestral_steps=args.ancestral, stagger=args.stagger)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
