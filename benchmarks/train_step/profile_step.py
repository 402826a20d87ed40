"""Where a train step's time goes: a profiler trace of the jitted step, by XLA op kind.

    python benchmarks/train_step/profile_step.py --model d512      # the benchmark's MFU model
    python benchmarks/train_step/profile_step.py --model md4 --layer_saves all

Runs the sharded masked-diffusion train step (random tokens, random weights) a few times
under ``jax.profiler.trace`` and sums the trace's XLA op events per kind: ``matmul`` (dot
and YNNPACK fusions) and every other fusion kind by name (``dynamic-update-slice``: the layer
scan stacking what the backward keeps; ``wrapped_broadcast``: zero fills; ...). Prints the
step's wall time, the top kinds with their share, and writes ``profile.json`` beside itself
(``--out``). Only the timed steps are traced (after compiling and a warm-up). Op events overlap on a multi-threaded CPU, so the shares are of summed op time.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gzip
import json
import re
import tempfile
from pathlib import Path

import jax

from dllm_jax.config import TrainConfig
from experiments.benchmark import parse_args as bench_args
from experiments.benchmark.peer import MD4_MODEL
from experiments.benchmark.setup import PRESETS, default_setup
from experiments.benchmark.training import train_step_time

MODELS = {"d512": (PRESETS["cpu"]["train_model"], 4, 128), "md4": (MD4_MODEL, 32, 128)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="d512")
    p.add_argument("--layer_saves", choices=("dots", "all"), default="dots")
    p.add_argument("--scan_unroll", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="traced steps")
    p.add_argument("--out", default=str(Path(__file__).with_name("profile.json")))
    args = p.parse_args(argv)
    cfg, batch, seq = MODELS[args.model]
    cfg = dataclasses.replace(cfg, layer_saves=args.layer_saves, scan_unroll=args.scan_unroll)
    setup = default_setup(bench_args(["--sections", ""]), jax.devices()[0].platform)
    train = TrainConfig(batch_size=batch, seq_len=seq, steps=1000, warmup_steps=0)
    trace_dir = tempfile.mkdtemp(prefix="dllm_profile_")
    _, step_s, _ = train_step_time(setup, cfg, train, reps=args.steps, trace_dir=trace_dir)
    kinds = _op_kinds(trace_dir, args.steps)
    total = sum(kinds.values())
    print(f"{args.model} ({cfg.layer_saves=}, {cfg.scan_unroll=}): median step {step_s:.4f} s "
          "(traced); op time per step by kind:")
    for name, sec in kinds.most_common(12):
        print(f"  {sec * 1e3:9.2f} ms  {sec / total:6.1%}  {name}")
    Path(args.out).write_text(json.dumps(dict(
        model=args.model, config=dataclasses.asdict(cfg), batch=batch, seq_len=seq, step_s=step_s,
        jax=jax.__version__, op_seconds_per_step=dict(kinds.most_common())), indent=1))


def _op_kinds(trace_dir: str, steps: int) -> collections.Counter:
    """Seconds per step of each XLA op kind in the trace (numbers stripped from op names)."""
    path = next(Path(trace_dir).rglob("*perfetto_trace.json.gz"))
    events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    kinds = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name.startswith(("ThunkExecutor", "$", "SlinkyThreadPool", "while", "Pjit")):
            continue
        kind = "matmul" if name.startswith(("ynn_fusion", "dot")) else re.sub(r"[.\d]+$", "", name)
        kinds[kind] += e.get("dur", 0) * 1e-6 / steps
    return kinds


if __name__ == "__main__":
    main()
