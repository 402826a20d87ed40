"""Supervised fine-tuning on conversations: ``python -m experiments.sft --process masked``.

Trains from scratch on the synthetic tool-use task (``configs.tool_use``: block diffusion
with ``--process masked``, the AR baseline with ``--process ar``), writing the task to
``--data`` first if that folder holds no ``train.jsonl``. ``--init_from RUN_DIR``
fine-tunes an existing run instead: its model, tokenizer and recipe, on the conversations
of ``--data`` (``<data>/{train,validation}.jsonl``, one ``{"messages": [...]}`` per line;
see ``dllm_jax.data.chat``). The loss is on what the assistant writes only; the prompt is
never corrupted. ``--set`` overrides any field (``train.steps=500``).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from dllm_jax.config import ExperimentConfig
from dllm_jax.data.tool_task import write_task
from dllm_jax.training.loop import train
from dllm_jax.training.run_dir import saved_config
from experiments import configs
from experiments.cli import apply_overrides


def sft_config(process: str, data: str, init_from: str = "", overrides=()) -> ExperimentConfig:
    """The experiment of an SFT run: ``configs.tool_use``, or the run ``init_from``'s own."""
    if not init_from:
        return apply_overrides(configs.tool_use(process, data_dir=data), list(overrides))
    saved = saved_config(Path(init_from))
    if saved is None:
        raise FileNotFoundError(f"--init_from {init_from!r} is not a run directory (no config.json or checkpoint)")
    exp = ExperimentConfig.from_dict(saved)
    exp = dataclasses.replace(
        exp, name=f"{exp.name}-sft",
        data=dataclasses.replace(exp.data, source=f"chat:{data}", tokenizer=""),
        train=dataclasses.replace(exp.train, init_from=str(init_from), warmup_steps=min(exp.train.warmup_steps, 100)),
        loop=dataclasses.replace(exp.loop, context_times=()))
    return apply_overrides(exp, list(overrides))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--process", default="masked", choices=["masked", "uniform", "hybrid", "ar"])
    parser.add_argument("--data", default="runs/tool_task", help="folder of {train,validation,test}.jsonl")
    parser.add_argument("--init_from", default="", help="a run directory to fine-tune")
    parser.add_argument("--run_dir", default=None, help="run directory (default runs/<name>)")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE")
    args = parser.parse_args(argv)
    if not (Path(args.data) / "train.jsonl").exists():
        write_task(args.data)
        print(f"wrote the synthetic tool-use task to {args.data}")
    exp = sft_config(args.process, args.data, args.init_from, args.set)
    result = train(exp, args.run_dir or f"runs/{exp.name}")
    print(f"final: {result.get('val_loss', float('nan')):.4f} nats/token on the assistant's tokens; "
          f"{result['wall_seconds']:.0f} s of training ({result['end_step'] - result['start_step']} steps)")


if __name__ == "__main__":
    main()
