"""Speed benchmark: device peaks, diffusion sampling vs AR decoding, scan overhead, training.

    python -m experiments.benchmark [--tiny] [--out benchmarks/results] [--sizes 256,1024]
        [--batch 1,32] [--steps 16,64,256,L] [--cached_steps L,4L] [--device_label NAME]
        [--run_dir RUN] [--sections sampling,scan,training] [--peer md4]

Writes ``<out>/<device-slug>.json`` and regenerates ``<out>/../RESULTS.md`` (one section
per JSON file in ``<out>``, see ``render_markdown``). Targets are measured, never asserted.

What is measured, and how:
- Peaks, in the same run: a large matmul (FLOP/s) and a large elementwise copy (bytes
  read + written per second), at the start and at the end of the run; the best of each is
  kept (other work on a shared machine only lowers them). Balance = FLOP/s / bytes/s.
- Sampling: random-init models (speed does not depend on the weights; ``--run_dir`` loads a
  trained diffusion model instead). Every program is compiled ahead of time (lower +
  compile = ``compile_s``), then run ``warmup`` times and timed ``reps`` times
  (``run_s`` = median, after ``block_until_ready``; fewer, at least one, when a run is
  longer than ``time_budget_s``). tokens/s = batch * length / run_s. ``--tiny`` (for tests)
  compiles the timed programs without LLVM optimisation, to compile fast.
- FLOPs and bytes come from XLA's cost analysis. XLA counts a while loop's body once (a
  probe at start-up checks this, ``cost.loops`` in the JSON), and the model's layers and the
  sampler's steps are loops, so the total is rebuilt as the sum over network passes of the
  cost of one compiled pass of that shape, whose layer scan is corrected by adding
  (num_layers - 1) x the cost of one compiled layer. A sampler pass runs when any row needs
  it, so the count used is the largest NFE over the batch (a lower bound for batched rules
  that skip passes). The step rules' own work (draws, sorting) is left out; ``xla_program``
  keeps the uncorrected cost of the whole program and ``flops_analytic`` a formula
  (2 x matmul params x tokens + 4 x layers x d_model x keys per token) to cross-check.
- Roofline: intensity = FLOPs / bytes vs the machine balance: above it compute-bound, below
  memory-bound (XLA's bytes count every fusion's operands and results as memory traffic).
- Peer mode (``--peer md4``): google-deepmind/md4's configuration (V 8,192, L 128, 6 x 256,
  adaLN, fp32) on our code, train step at batch 32 and ancestral sampler per step at batch
  4 x 128, beside md4's figures recorded on the same machine (``benchmarks/peer_md4``: the
  script that measured them, md4's commit). ``--sections ''`` measures the peer mode alone.
- Training: MFU = (6 x matmul params + 12 x layers x d_model x seq_len) x tokens/s / peak
  (PaLM's formula; matmul params exclude the input embedding).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
from pathlib import Path

import jax

from .cost import PassCosts, best_peaks, loop_counting, measure_peaks
from .peer import peer_md4, reference
from .report import device_info, render_markdown, targets, write_results
from .sampling import build_models, finish_record, sampling_records
from .scan import scan_overhead
from .setup import SECTIONS, TARGETS, default_setup, resolve_steps
from .training import training

__all__ = ["TARGETS", "default_setup", "finalize", "main", "parse_args", "resolve_steps"]


# ---- entry point ----------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="a tiny model and sizes (tests, seconds)")
    p.add_argument(
        "--out", default="benchmarks/results", help="folder of the per-device JSON files"
    )
    p.add_argument("--markdown", help="report path (default: <out>/../RESULTS.md)")
    p.add_argument("--sizes", help="generated tokens, comma-separated (e.g. 256,1024)")
    p.add_argument(
        "--batch", help="batch sizes, comma-separated: latency and throughput (e.g. 1,32)"
    )
    p.add_argument(
        "--steps", help="ancestral K values: numbers, L (= length) or nL (e.g. 16,64,256,L)"
    )
    p.add_argument("--cached_steps", help="K values of the cached rule (e.g. L,4L)")
    p.add_argument("--block", type=int, help="block size of the cached block generation")
    p.add_argument("--reps", type=int, help="timed runs per measurement (median)")
    p.add_argument(
        "--sections", default=",".join(SECTIONS), help="what to measure besides the peaks"
    )
    p.add_argument("--device_label", help="device name in the report (default: from jax.devices())")
    p.add_argument(
        "--run_dir", help="load a trained masked diffusion model instead of a random one"
    )
    p.add_argument("--peer", help="also run a peer's configuration on our code: md4")
    return p.parse_args(argv)


def finalize(result: dict) -> None:
    """Figures relative to the final peaks: records' rates and roofline, MFU, targets."""
    peaks = result["peaks"]
    for r in result.get("records", []):
        finish_record(r, peaks)
    for t in result.get("training", []):
        t["mfu"] = t["flops_per_token"] * t["tokens_per_s"] / peaks["matmul"]["flops_per_s"]
    result["targets"] = targets(result)


def main(argv=None) -> dict:
    args = parse_args(argv)
    dev, slug = device_info(args.device_label, args.tiny)
    setup = default_setup(args, dev["platform"])
    if setup.peer == "md4":
        reference(dev["platform"])  # its recorded figures exist: refused before hours of measuring
    loops = loop_counting()
    result = dict(
        device=dev,
        jax_version=jax.__version__,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        config=dataclasses.asdict(setup),
        cost=dict(
            loops=loops,
            method=(
                "XLA cost of one compiled pass x passes, layer scan corrected (XLA counts a loop body once)"
                if loops == "once"
                else "XLA cost of one compiled pass x passes (loops counted per iteration)"
            ),
        ),
    )
    peaks = measure_peaks(setup)  # measured again at the end; the best of both is kept
    print(
        f"peaks: {peaks['matmul']['flops_per_s'] / 1e9:.1f} GFLOP/s, {peaks['copy']['bytes_per_s'] / 1e9:.1f} GB/s"
    )
    if "sampling" in setup.sections or "scan" in setup.sections:
        models = build_models(setup)
        result["config"]["model"] = dataclasses.asdict(models.config)
    if "sampling" in setup.sections:
        result["records"] = sampling_records(setup, models, PassCosts(loops), peaks)
    if "scan" in setup.sections:
        result["scan"] = scan_overhead(setup, models)
    if "training" in setup.sections:
        result["training"] = training(setup)
    if setup.peer == "md4":
        result["peer"] = peer_md4(setup, dev["platform"])
    result["peaks"] = best_peaks([peaks, measure_peaks(setup)])
    finalize(result)
    out_dir = Path(args.out)
    path = write_results(result, out_dir, slug)
    md_path = Path(args.markdown) if args.markdown else out_dir.parent / "RESULTS.md"
    md_path.write_text(render_markdown(out_dir))
    print(f"wrote {path} and {md_path}")
    return result
