"""The main job: an AR model, and a block diffusion model adapted from AR, at equal tokens.

On the embedded corpus (CPU, about ten minutes on two cores):

1. AR for the whole budget (2400 steps x 4 x 128 tokens): the baseline, and the judge of
   sample quality;
2. AR for 7/8 of the budget (``--ar_share``), then a block diffusion model (BD3-LM's block
   NELBO, blocks of 4, Dream's shift) initialised from it for the rest
   (``TrainConfig.init_from``), its finished blocks attending causally and keeping the AR
   loss (``NoiseConfig.context_ar_weight=1``): the best path measured in
   ``benchmarks/block`` at this budget (AR 1/2, 3/4, 7/8 of it: bound ratios to AR 2.76x,
   2.61x, 2.57x; with the context's AR loss 2.45x);

then prints the validation bounds side by side (equal total tokens; for the block model also
its bound with staggered clocks, ``NoiseConfig.block_stagger``), the diffusion model's
NLL per masked token by mask rate, samples of both, and the speed/quality comparison of
``experiments.block_eval``: network passes per generated token under threshold decoding
vs one token per step, gen ppl against AR at the same sample entropy, tokens/s at batch 1
vs AR with its KV cache, measured back to back.

    python -m experiments.quickstart [--run_dir runs/quickstart] [--block_size 4] [--ar_share 0.875] [--set train.steps=100 ...]

``--set`` overrides apply to every phase. Running it again in the same directory restores
the finished checkpoints and prints the same bounds.
"""

from __future__ import annotations

import argparse
import json
import math
import textwrap
import time
from pathlib import Path

from dllm_jax.training.loop import train, with_overrides
from experiments import configs
from experiments.block_eval import speed_and_quality
from experiments.block_study import staggered_bounds
from experiments.cli import apply_overrides


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", default="runs/quickstart")
    parser.add_argument("--block_size", type=int, default=4)
    parser.add_argument("--eval_samples", type=int, default=16, help="samples per decoding setting")
    parser.add_argument("--length", type=int, default=128, help="new tokens per sample")
    parser.add_argument("--ar_share", type=float, default=0.875,
                        help="share of the training steps spent as AR before adapting to block diffusion")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE")
    args = parser.parse_args(argv)
    if not 0.0 < args.ar_share < 1.0:
        parser.error(f"--ar_share must be in (0, 1), got {args.ar_share}")
    t0 = time.perf_counter()
    root = Path(args.run_dir)
    ar_exp = apply_overrides(configs.quickstart("ar"), args.set)
    total = ar_exp.train.steps
    if total < 2:
        parser.error(f"the budget must be >= 2 steps to split into AR and diffusion phases, got {total}")
    ar_steps = min(max(round(total * args.ar_share), 1), total - 1)
    adapt_steps = total - ar_steps
    phases = {
        "ar": ar_exp,
        "ar_phase": with_overrides(apply_overrides(configs.quickstart_ar_phase(ar_steps), args.set),
                                   **_phase(ar_steps)),
        "diffusion": with_overrides(apply_overrides(configs.quickstart_adapted(
            str(root / "ar_phase"), args.block_size, steps=adapt_steps, context_attention="causal",
            context_ar_weight=1.0), args.set), **_phase(adapt_steps)),
    }
    results = {}
    for name, exp in phases.items():
        print(f"\n=== {exp.name}: {exp.train.steps} steps x {exp.train.batch_size} x {exp.train.seq_len} tokens"
              + (f", initialised from {exp.train.init_from}" if exp.train.init_from else ""))
        results[name] = train(exp, root / name)
    tokens = {n: e.train.steps * e.train.batch_size * e.train.seq_len for n, e in phases.items()}
    ar, diff = results["ar"], results["diffusion"]
    print(f"\n=== validation (embedded corpus, held-out split), equal training tokens ({tokens['ar']:,})")
    print(f"  {'model':34s} {'nats/token':>10s} {'ppl':>10s}")
    print(f"  {'AR, whole budget':34s} {ar['val_loss']:10.4f} {'=':>2s} {ar['val_ppl']:7.2f}")
    print(f"  {f'AR {ar_steps} + block-{args.block_size} {adapt_steps} steps':34s} {diff['val_loss']:10.4f} "
          f"{'<=':>2s} {diff['val_ppl']:7.2f}   (ppl ratio to AR {math.exp(diff['val_loss'] - ar['val_loss']):.2f}x)")
    print("  (diffusion: the block NELBO on a stratified time grid; AR: exact likelihood)")
    staggered = staggered_bounds(root / "diffusion", (0.5,), with_ci=True, left_to_right=True)
    (half, ci), l2r = staggered["0.5"], staggered["left_to_right"]
    print("  the same network with staggered clocks (NoiseConfig.block_stagger: its blocks revealed in orders\n"
          "  biased left to right; benchmarks/block): stagger 0.5 "
          f"{half:.4f} +- {ci:.3f} ({math.exp(half - ar['val_loss']):.2f}x); left to right inside each block\n"
          f"  (stagger 1, an AR factorisation of the block; exact) {l2r:.4f} ({math.exp(l2r - ar['val_loss']):.2f}x)")
    if "context_use" in diff:
        print(f"\n=== NLL per masked token by mask rate t, each block given the clean past "
              f"(AR's exact NLL: {ar['val_loss']:.3f})")
        print(textwrap.indent(diff["context_use"].table(), "  "))
    print(f"\n=== samples: block diffusion (blocks of {args.block_size}, exact cache, K = steps per block)")
    for k, texts in diff["samples"].items():
        print(f"--- K = {k}")
        for text in texts:
            print(textwrap.indent(repr(text)[:400], "  "))
    print("--- AR model (temperature 1)")
    for text in next(iter(ar["samples"].values())):
        print(textwrap.indent(repr(text)[:400], "  "))
    print()
    report = speed_and_quality(root / "diffusion", root / "ar", length=args.length, num_samples=args.eval_samples,
                               batch_size=min(args.eval_samples, 8))
    (root / "speed_quality.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"\nquickstart wall time: {time.perf_counter() - t0:.0f}s (records in {root / 'speed_quality.json'})")


def _phase(steps: int) -> dict:
    """Overrides giving a phase its own step count (warmup a tenth, one eval and checkpoint)."""
    return dict(train={"steps": steps, "warmup_steps": steps // 10}, loop={"eval_every": steps, "checkpoint_every": steps})


if __name__ == "__main__":
    main()
