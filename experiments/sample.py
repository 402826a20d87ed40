"""Sample from a trained run: ``python -m experiments.sample runs/quickstart/masked --steps 8 32``."""

from __future__ import annotations

import argparse
import dataclasses
import time

from dllm_jax.diffusion import ARObjective
from dllm_jax.training.loop import Sampler, load_run

MAX_STEPS = 100_000


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 32, 128], help="step counts K")
    parser.add_argument("--num_samples", type=int, default=4)
    parser.add_argument("--length", type=int, default=None, help="tokens per sample (default: the run's)")
    parser.add_argument("--max_steps", type=int, default=MAX_STEPS,
                        help="refuse step counts above this (each step is one network pass)")
    args = parser.parse_args(argv)
    too_many = [k for k in args.steps if k > args.max_steps]
    if too_many:
        parser.error(f"--steps {too_many} exceed --max_steps={args.max_steps} (each step is a full network "
                     "pass; raise --max_steps to run them anyway)")
    exp, graphdef, params, tok, objective, step = load_run(args.run_dir)
    length = exp.loop.sample_length if args.length is None else args.length
    if not 1 <= length <= exp.model.max_len:
        parser.error(f"--length must be in [1, {exp.model.max_len}] (the model's max_len), got {length}")
    loop = dataclasses.replace(exp.loop, sample_steps=tuple(args.steps), num_samples=args.num_samples,
                               sample_length=length)
    sampler = Sampler(dataclasses.replace(exp, loop=loop), objective, graphdef)
    print(f"{exp.name} @ step {step}")
    # AR decodes one token per pass: its "step count" is the length (one entry, as in training).
    for k in (length,) if isinstance(objective, ARObjective) else loop.sample_steps:
        t0 = time.perf_counter()
        print(f"--- K = {k}: sampling {args.num_samples} x {length} tokens ...", flush=True)
        rows = sampler(params, k)
        print(f"    done in {time.perf_counter() - t0:.1f}s (compile included)")
        for row in rows:
            print(repr(tok.decode(row.tolist())))


if __name__ == "__main__":
    main()
