"""Sample from a trained run: ``python -m experiments.sample runs/quickstart/masked --steps 8 32``."""

from __future__ import annotations

import argparse
import dataclasses

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
    for k, texts in sampler.texts(params, tok).items():
        print(f"--- K = {k}")
        for text in texts:
            print(repr(text))


if __name__ == "__main__":
    main()
