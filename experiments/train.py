"""Train (or resume) an experiment: ``python -m experiments.train --config quickstart``."""

from __future__ import annotations

from dllm_jax.training.distributed import maybe_initialize_distributed
from dllm_jax.training.loop import train
from experiments.cli import experiment_from_args, experiment_parser


def main(argv=None):
    parser = experiment_parser(__doc__)
    args = parser.parse_args(argv)
    maybe_initialize_distributed()
    exp = experiment_from_args(args)
    result = train(exp, args.run_dir or f"runs/{exp.name}")
    print(f"final: {result.get('val_loss', float('nan')):.4f} nats/token, "
          f"{result.get('val_bits_per_token', float('nan')):.4f} bits/token")


if __name__ == "__main__":
    main()
