"""Sample from a trained run: ``python -m experiments.sample runs/quickstart/masked --steps 8 32``."""

from __future__ import annotations

import argparse
import dataclasses

from dllm_jax.training.loop import Sampler, load_run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 32, 128], help="step counts K")
    parser.add_argument("--num_samples", type=int, default=4)
    parser.add_argument("--length", type=int, default=None)
    args = parser.parse_args(argv)
    exp, graphdef, params, tok, objective, step = load_run(args.run_dir)
    loop = dataclasses.replace(exp.loop, sample_steps=tuple(args.steps), num_samples=args.num_samples,
                               sample_length=args.length or exp.loop.sample_length)
    sampler = Sampler(dataclasses.replace(exp, loop=loop), objective, graphdef)
    print(f"{exp.name} @ step {step}")
    for k, texts in sampler.texts(params, tok).items():
        print(f"--- K = {k}")
        for text in texts:
            print(repr(text))


if __name__ == "__main__":
    main()
