"""Validation likelihood of a trained run: ``python -m experiments.evaluate runs/quickstart/masked``.

Prints nats/token with its 95% Monte-Carlo CI over the stratified time grid (a bound for
diffusion, exact for AR), bits/token, bits/byte (comparable across tokenizers) and the
number of time samples; then the context-use diagnostic: the NLL per corrupted token at
each noise level t, against the data's unigram entropy (``--context_times``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from dllm_jax.evaluation.context_use import DEFAULT_TIMES, context_use
from dllm_jax.evaluation.likelihood import evaluate_likelihood, utf8_bytes
from dllm_jax.sharding import make_mesh
from dllm_jax.training.loop import eval_batches, load_run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--batches", type=int, default=None, help="validation batches")
    parser.add_argument("--time_points", type=int, default=16, help="stratified time offsets")
    parser.add_argument("--context_times", type=float, nargs="*", default=list(DEFAULT_TIMES),
                        help="noise levels of the context-use diagnostic (none: skip it)")
    args = parser.parse_args(argv)
    exp, graphdef, params, tok, objective, step = load_run(args.run_dir)
    if args.batches is not None:
        if args.batches < 1:
            parser.error(f"--batches must be >= 1, got {args.batches}")
        exp = dataclasses.replace(exp, loop=dataclasses.replace(exp.loop, eval_batches=args.batches))
    mesh = make_mesh(exp.mesh)
    batches = eval_batches(exp, tok, mesh)
    result = evaluate_likelihood(objective, graphdef, params, batches, mesh, time_points=args.time_points,
                                 seed=exp.train.seed, num_bytes=utf8_bytes(tok, batches), log=print)
    out = {**result.as_dict(), "step": step}
    print(json.dumps(out, indent=2))
    if args.context_times:
        use = context_use(objective, graphdef, params, batches, mesh, times=args.context_times,
                          seed=exp.train.seed, log=print)
        out["context_use"] = use.as_dict()
        print("\nNLL per corrupted token by noise level t" + (" (AR: exact NLL, the same at every t)" if use.exact else ""))
        print(use.table())
    return out


if __name__ == "__main__":
    main()
