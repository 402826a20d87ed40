"""What one benchmark run measures: presets, flags checks, step counts."""

from __future__ import annotations

import dataclasses
import re

from dllm_jax.config import ModelConfig
from dllm_jax.sampling.canvas import round_up

# Cost-only compiles skip LLVM optimisation: cost analysis reads the optimised HLO, unchanged.
COST_ONLY = {"xla_backend_optimization_level": 0}
SECTIONS = ("sampling", "scan", "training")
RANDOM_NOTE = "random N(0, 0.02^2) weights: speed does not depend on them"
SAMPLING_NOTE = (
    "GFLOP and GB: the network passes only (XLA cost of one pass x passes), not the step rules' "
    "own work (draws over the vocabulary at every position, sorting). Rules that skip passes "
    "(cached, threshold) run one for the whole batch when any row needs it: at batch > 1 the "
    "count used, the largest NFE over the rows, is a lower bound. K/blk: steps per block."
)
SCAN_NOTE = (
    "The first ratio is the target's (scan sampler, forward + step rule, vs the forward alone); "
    "the second isolates the loop (the same steps, each a jitted call from Python)."
)
TARGETS = {
    "scan": "scan sampler <= 1.10 x K separate jitted forward passes",
    "compile": "compile time at K=1024 <= 1.5 x at K=8",
    "train_cpu": "training >= 50% of the matmul peak (CPU, d_model=512)",
    "train_gpu": "training >= 40% MFU (GPU, ~125M params, bf16)",
    "ar_gpu": "diffusion >= 3 x AR tokens/s at 256 tokens, batch 1 (GPU only)",
}


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything one benchmark run measures (stored in the JSON as ``config``)."""

    model: ModelConfig
    train_model: ModelConfig
    train_batch: int
    train_seq: int
    train_steps: int
    sizes: tuple[int, ...]
    batches: tuple[int, ...]
    steps: tuple[str, ...]
    cached_steps: tuple[str, ...]
    block: int
    scan_k: int
    matmul_n: int
    matmul_dtype: str
    copy_mb: int
    warmup: int
    reps: int
    sections: tuple[str, ...]
    tiny: bool
    run_dir: str | None = None
    compiler_options: dict | None = None  # of the timed programs; tiny mode compiles fast (O0)
    time_budget_s: float | None = None  # fewer timed runs (>= 1) when one run is this long


def default_setup(args, platform: str) -> Setup:
    """Presets: ``tiny`` (tests), CPU (a few minutes), GPU (GPT-2-small-ish, bf16)."""
    gpu = platform == "gpu"
    if args.tiny:
        model = ModelConfig(num_tokens=61, max_len=32, d_model=32, num_layers=2, num_heads=2)
        train = model
        sizes, batches, steps, cached = (16,), (1, 2), ("4L",), ("4L",)
        extra = dict(
            train_batch=4,
            train_seq=32,
            train_steps=3,
            block=8,
            scan_k=8,
            matmul_n=1024,
            matmul_dtype="float32",
            copy_mb=32,
            warmup=1,
            reps=2,
            compiler_options=COST_ONLY,
        )
    elif gpu:
        model = ModelConfig(
            num_tokens=50257,
            max_len=1024,
            d_model=768,
            num_layers=12,
            num_heads=12,
            dtype="bfloat16",
            vocab_multiple=128,
        )
        train = model
        sizes, batches, steps, cached = (256, 1024), (1, 32), ("16", "64", "256", "L"), ("L", "4L")
        extra = dict(
            train_batch=16,
            train_seq=1024,
            train_steps=10,
            block=32,
            scan_k=64,
            matmul_n=8192,
            matmul_dtype="bfloat16",
            copy_mb=1024,
            warmup=1,
            reps=3,
            time_budget_s=60.0,
        )
    else:
        model = ModelConfig(num_tokens=1024, max_len=128, d_model=128, num_layers=2, num_heads=4)
        train = ModelConfig(num_tokens=4096, max_len=128, d_model=512, num_layers=4, num_heads=8)
        sizes, batches, steps, cached = (64, 128), (1, 4), ("16", "L"), ("L",)
        extra = dict(
            train_batch=4,
            train_seq=128,
            train_steps=3,
            block=32,
            scan_k=64,
            matmul_n=4096,
            matmul_dtype="float32",
            copy_mb=256,
            warmup=1,
            reps=3,
            time_budget_s=10.0,
        )
    sizes = _ints(args.sizes) if args.sizes else sizes
    batches = _ints(args.batch) if args.batch else batches
    steps = tuple(args.steps.split(",")) if args.steps else steps
    cached = tuple(args.cached_steps.split(",")) if args.cached_steps else cached
    extra.update({k: getattr(args, k) for k in ("reps", "block") if getattr(args, k) is not None})
    sections = tuple(args.sections.split(",")) if args.sections else ()
    _check(sizes, batches, steps + cached, sections, extra)
    need = max(round_up(s, extra["block"]) for s in sizes)
    model = dataclasses.replace(model, max_len=max(model.max_len, need))
    return Setup(
        model=model,
        train_model=train,
        sizes=sizes,
        batches=batches,
        steps=steps,
        cached_steps=cached,
        sections=sections,
        tiny=args.tiny,
        run_dir=args.run_dir,
        **extra,
    )


def _check(sizes, batches, step_specs, sections, extra) -> None:
    if min(sizes + batches) < 1 or extra["reps"] < 1 or extra["block"] < 1:
        raise ValueError(
            f"sizes, batches, reps and block must be >= 1, got {sizes}, {batches}, "
            f"{extra['reps']}, {extra['block']}"
        )
    bad = [s for s in step_specs if not re.fullmatch(r"\d+|\d*L", s) or s in ("0", "0L")]
    if bad:
        raise ValueError(f"step counts must be positive integers, L or nL (n x length), got {bad}")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; expected some of {SECTIONS}")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def resolve_steps(specs, length: int) -> list[int]:
    """'16', 'L', '4L' -> K values for a generation of ``length`` tokens (<= 4L, deduplicated)."""
    out = []
    for spec in specs:
        k = int(spec[:-1] or 1) * length if spec.endswith("L") else int(spec)
        if k <= 4 * length and k not in out:
            out.append(k)
    return out
