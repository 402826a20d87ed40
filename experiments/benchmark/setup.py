"""What one benchmark run measures: presets, flags checks, step counts."""

from __future__ import annotations

import dataclasses
import re

from dllm_jax.config import ModelConfig
from dllm_jax.sampling.canvas import round_up

# Cost-only compiles skip LLVM optimisation: cost analysis reads the optimised HLO, unchanged.
COST_ONLY = {"xla_backend_optimization_level": 0}
SECTIONS = ("sampling", "scan", "training")
PEERS = ("md4",)
RANDOM_NOTE = "random N(0, 0.02^2) weights: speed does not depend on them"
SAMPLING_NOTE = (
    "GFLOP and GB: the network passes only (XLA cost of one pass x passes), not the step rules' "
    "own work (draws, scores, sorting). Outside passes: the share of the run not spent in its "
    "network passes: each pass shape timed alone (8 passes scanned in one program) x its count; "
    "within a few % of 0 it is timing noise, and negative where the sampler's passes ran faster "
    "than the same shape alone (the approximate cache's refresh is timed as a cache-writing chunk). "
    "Random numbers per step (inverse-CDF draw): ancestral 3 x B x L (one uniform for the unmask "
    "decision, two for the token), threshold 2 x B x L, besides B x L key derivations; "
    "ancestral-gumbel: the earlier Gumbel-argmax draw, B x L x V + B x L. Rules that skip passes "
    "(cached, threshold) run one for the whole batch when any row needs it: at batch > 1 the "
    "count used, the largest NFE over the rows, is a lower bound. K/blk: steps per block."
)
SCAN_ROUNDS = 3
SCAN_NOTE = (
    "The first ratio is the target's (the scan sampler, forward + step rule, vs K jitted forwards "
    "dispatched back to back); the second is stricter (vs K forwards scanned in one program, no "
    "dispatch); the third isolates the loop (the same steps, each a jitted call from Python). "
    f"Each time is the median over {SCAN_ROUNDS} rounds (the programs timed in turn) of medians of the runs."
)
TARGETS = {
    "scan": "scan sampler <= 1.10 x K separate jitted forward passes (ancestral and threshold)",
    "compile": "compile time at K=1024 <= 1.5 x at K=8",
    "train_cpu": "training >= 50% of the matmul peak (CPU, d_model=512)",
    "train_gpu": "training >= 40% MFU (GPU, ~125M params, bf16)",
    "ar_gpu": "diffusion >= 3 x AR tokens/s at 256 tokens, batch 1 (GPU only)",
    "peer_train": "train step <= 0.8 x md4's at md4's configuration (peer mode)",
    "peer_sampler": "sampler step <= 0.7 x md4's per step, batch 4 x 128 (peer mode)",
    "draw": "ancestral K=16, batch 1, 128 tokens: >= 1.5 x the tokens/s of the Gumbel draw (same run)",
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
    peer: str | None = None  # a peer's configuration on our code, beside its recorded figures


_GPU_MODEL = ModelConfig(num_tokens=50257, max_len=1024, d_model=768, num_layers=12, num_heads=12,
                         dtype="bfloat16", vocab_multiple=128)
_TINY_MODEL = ModelConfig(num_tokens=61, max_len=32, d_model=32, num_layers=2, num_heads=2)
# Each preset: the Setup fields the flags do not give (sizes/batch/steps/reps/block may be overridden).
PRESETS = {
    "tiny": dict(model=_TINY_MODEL, train_model=_TINY_MODEL, sizes=(16,), batches=(1, 2), steps=("4L",),
                 cached_steps=("4L",), train_batch=4, train_seq=32, train_steps=3, block=8, scan_k=8,
                 matmul_n=1024, matmul_dtype="float32", copy_mb=32, warmup=1, reps=2,
                 compiler_options=COST_ONLY),
    "gpu": dict(model=_GPU_MODEL, train_model=_GPU_MODEL, sizes=(256, 1024), batches=(1, 32),
                steps=("16", "64", "256", "L"), cached_steps=("L", "4L"), train_batch=16, train_seq=1024,
                train_steps=10, block=32, scan_k=64, matmul_n=8192, matmul_dtype="bfloat16", copy_mb=1024,
                warmup=1, reps=3, time_budget_s=60.0),
    "cpu": dict(model=ModelConfig(num_tokens=1024, max_len=128, d_model=128, num_layers=2, num_heads=4),
                train_model=ModelConfig(num_tokens=4096, max_len=128, d_model=512, num_layers=4, num_heads=8),
                sizes=(64, 128), batches=(1, 4), steps=("16", "L"), cached_steps=("L",), train_batch=4,
                train_seq=128, train_steps=3, block=32, scan_k=64, matmul_n=4096, matmul_dtype="float32",
                copy_mb=256, warmup=1, reps=3, time_budget_s=10.0),
}


def default_setup(args, platform: str) -> Setup:
    """Presets (``PRESETS``): ``tiny`` (tests), CPU (a few minutes), GPU (GPT-2-small-ish,
    bf16); the flags override sizes, batches, step counts, reps and block."""
    fields = dict(PRESETS["tiny" if args.tiny else "gpu" if platform == "gpu" else "cpu"])
    if args.sizes:
        fields["sizes"] = _ints(args.sizes)
    if args.batch:
        fields["batches"] = _ints(args.batch)
    if args.steps:
        fields["steps"] = tuple(args.steps.split(","))
    if args.cached_steps:
        fields["cached_steps"] = tuple(args.cached_steps.split(","))
    fields.update({k: getattr(args, k) for k in ("reps", "block") if getattr(args, k) is not None})
    fields["sections"] = tuple(args.sections.split(",")) if args.sections else ()
    _check(fields)
    need = max(round_up(s, fields["block"]) for s in fields["sizes"])
    fields["model"] = dataclasses.replace(fields["model"], max_len=max(fields["model"].max_len, need))
    if args.peer is not None and args.peer not in PEERS:
        raise ValueError(f"unknown peer {args.peer!r}; expected one of {PEERS}")
    return Setup(tiny=args.tiny, run_dir=args.run_dir, peer=args.peer, **fields)


def _check(fields: dict) -> None:
    sizes, batches, reps, block = (fields[k] for k in ("sizes", "batches", "reps", "block"))
    if min(sizes + batches) < 1 or reps < 1 or block < 1:
        raise ValueError(
            f"sizes, batches, reps and block must be >= 1, got {sizes}, {batches}, {reps}, {block}"
        )
    bad = [s for s in fields["steps"] + fields["cached_steps"] if not re.fullmatch(r"\d+|\d*L", s) or s in ("0", "0L")]
    if bad:
        raise ValueError(f"step counts must be positive integers, L or nL (n x length), got {bad}")
    unknown = set(fields["sections"]) - set(SECTIONS)
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
