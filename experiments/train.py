"""Train (or resume) an experiment: ``python -m experiments.train --config quickstart``.

``--init_from PATH`` starts the parameters from a run directory of ours or from a Hugging
Face Llama / Qwen2 folder; for a folder, the backbone's sizes and tokenizer are the folder's
and the config keeps its attention kind, block size, shift, dtype and max_len (``--set
model.attention=block_causal model.block_size=4 ...`` adapts the model).
"""

from __future__ import annotations

import dataclasses

from dllm_jax.nn.convert import is_hf_folder
from dllm_jax.training.distributed import maybe_initialize_distributed
from dllm_jax.training.loop import train
from dllm_jax.training.run_dir import init_from_hf
from experiments import configs
from experiments.cli import apply_overrides, experiment_parser


def main(argv=None):
    parser = experiment_parser(__doc__.splitlines()[0])
    parser.add_argument("--init_from", default="", help="a run directory or a Hugging Face model folder")
    args = parser.parse_args(argv)
    maybe_initialize_distributed()
    exp = configs.get(args.config, args.process)
    if args.init_from:
        exp = init_from_hf(exp, args.init_from) if is_hf_folder(args.init_from) else dataclasses.replace(
            exp, train=dataclasses.replace(exp.train, init_from=args.init_from))
    exp = apply_overrides(exp, args.set)
    result = train(exp, args.run_dir or f"runs/{exp.name}")
    print(f"final: {result.get('val_loss', float('nan')):.4f} nats/token, "
          f"{result.get('val_bits_per_token', float('nan')):.4f} bits/token")


if __name__ == "__main__":
    main()
