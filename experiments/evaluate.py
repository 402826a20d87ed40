"""Validation bound of a trained run: ``python -m experiments.evaluate runs/quickstart/masked``."""

from __future__ import annotations

import argparse
import json

from dllm_jax.sharding import make_mesh
from dllm_jax.training.loop import _eval_batches, evaluate, load_run
from dllm_jax.training.step import make_eval_step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--batches", type=int, default=None, help="validation batches")
    parser.add_argument("--time_points", type=int, default=16, help="stratified time offsets")
    args = parser.parse_args(argv)
    exp, graphdef, params, tok, objective, step = load_run(args.run_dir)
    if args.batches:
        import dataclasses

        exp = dataclasses.replace(exp, loop=dataclasses.replace(exp.loop, eval_batches=args.batches))
    mesh = make_mesh(exp.mesh)
    eval_fn = make_eval_step(objective, graphdef, mesh, seed=exp.train.seed)
    time_points = 1 if exp.noise.process == "ar" else args.time_points
    result = evaluate(eval_fn, params, _eval_batches(exp, tok, mesh), time_points)
    result.update(step=step, time_points=time_points, tokens=exp.loop.eval_batches * exp.train.batch_size * exp.train.seq_len)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
