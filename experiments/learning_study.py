"""The training-recipe study: which choices let masked (and uniform) diffusion learn real text.

One factor at a time against the quickstart config, at its token budget (1x: 300 steps x
32 x 128 tokens) and at 4x, beside the AR model of the same backbone on the same tokens.
Every variant is a list of ``--set`` overrides of validated config fields, so anyone can
rerun one with ``python -m experiments.train --config quickstart --set ...``.

    python -m experiments.learning_study                      # everything (see README.md)
    python -m experiments.learning_study --only ar base shift --budgets 1
    python -m experiments.learning_study --report             # table + plots from saved runs

Each run directory under ``--runs`` is kept; a finished run is not trained again (its
record is read back), so an interrupted study resumes where it stopped. Results go to
``--out`` (default ``benchmarks/learning``): ``results.json``, ``results.md`` and plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from dllm_jax.config import ExperimentConfig, NoiseConfig
from dllm_jax.diffusion import shift_right, token_nll
from dllm_jax.sharding import make_mesh
from dllm_jax.training.loop import eval_batches, load_run, train
from experiments import configs
from experiments.cli import apply_overrides
from experiments.learning_report import write_report

BASE_STEPS = 300


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    factor: str
    overrides: tuple[str, ...] = ()
    process: str = "masked"
    batch_size: int = 32  # steps scale so that tokens stay equal
    note: str = ""


def _v(name, factor, *overrides, process="masked", batch_size=32, note=""):
    return Variant(name, factor, tuple(overrides), process, batch_size, note)


def original(process: str) -> ExperimentConfig:
    """The quickstart as it was before this study, which every variant changes one thing of.

    Spelled out here, not read from ``configs.quickstart``'s training fields, so that the
    study's baseline does not move when the quickstart adopts the winners: the original
    noise recipe (uniform times on [0, 1], ELBO weighting, no AR rows), no shift, no ALiBi,
    lr 2e-3 with 30 warmup steps at batch 32, weight decay 0.01.
    """
    exp = configs.quickstart(process)
    return dataclasses.replace(
        exp,
        model=dataclasses.replace(exp.model, shift=False, attention_bias="none"),
        noise=NoiseConfig(process=process),
        train=dataclasses.replace(exp.train, batch_size=32, steps=BASE_STEPS, lr=2e-3, warmup_steps=30,
                                  weight_decay=0.01, b2=0.98, grad_clip=1.0, ema_decay=0.0, seed=0),
        loop=dataclasses.replace(exp.loop, eval_batches=4, eval_time_points=8),
    )


# The combined recipes of the later rounds, each the previous plus the next winners.
CURRICULUM = ("model.shift=True", "noise.ar_fraction=1.0", "noise.ar_fraction_end=0.0")
BEST3 = (*CURRICULUM, "noise.time_distribution='logit_normal'")
BEST4 = (*BEST3, "model.attention_bias='alibi'")
BEST5 = (*BEST4, "train.lr=0.003")

VARIANTS = [
    _v("ar", "reference", process="ar"),
    _v("base", "reference", note="the original quickstart recipe"),
    _v("ar_batch16", "reference", process="ar", batch_size=16, note="AR at the diffusion winner's batch size"),
    _v("ar_batch8", "reference", process="ar", batch_size=8),
    _v("ar_batch4", "reference", process="ar", batch_size=4),
    _v("ar_batch8_lr_3e-3", "reference", "train.lr=0.003", process="ar", batch_size=8),
    _v("ar_batch4_lr_3e-3", "reference", "train.lr=0.003", process="ar", batch_size=4),
    _v("ar_batch4_lr_5e-3", "reference", "train.lr=0.005", process="ar", batch_size=4),
    _v("ar_batch4_lr_3e-3_wd_0.1", "reference", "train.lr=0.003", "train.weight_decay=0.1", process="ar",
       batch_size=4),
    _v("ar_batch4_lr_3e-3_wd_0.1_alibi", "reference", "train.lr=0.003", "train.weight_decay=0.1",
       "model.attention_bias='alibi'", process="ar", batch_size=4, note="AR with the diffusion winner's ALiBi"),
    _v("ar_batch4_lr_3e-3_seed1", "seed replicate", "train.lr=0.003", "train.seed=1", process="ar", batch_size=4),
    # optimisation
    _v("lr_1e-3", "learning rate", "train.lr=0.001"),
    _v("lr_4e-3", "learning rate", "train.lr=0.004"),
    _v("lr_8e-3", "learning rate", "train.lr=0.008"),
    _v("warmup_0", "warmup", "train.warmup_steps=0"),
    _v("warmup_100", "warmup", "train.warmup_steps=100"),
    _v("batch_8", "batch size (equal tokens)", batch_size=8),
    _v("batch_16", "batch size (equal tokens)", batch_size=16),
    _v("batch_64", "batch size (equal tokens)", batch_size=64),
    _v("no_clip", "gradient clipping", "train.grad_clip=0.0"),
    _v("b2_0.95", "Adam beta2", "train.b2=0.95"),
    _v("b2_0.999", "Adam beta2", "train.b2=0.999"),
    # training times
    _v("clip_0.1_1", "time distribution", "noise.t_low=0.1"),
    _v("clip_0.3_0.8", "time distribution", "noise.t_low=0.3", "noise.t_high=0.8"),
    _v("logitnormal", "time distribution", "noise.time_distribution='logit_normal'"),
    # weighting
    _v("flat", "loss weighting", "noise.weighting='flat'"),
    # model
    _v("time_cond", "time conditioning", "model.time_conditioning=True"),
    _v("embed_0.02", "init scales", "model.embed_init_std=0.02"),
    _v("head_zero", "init scales", "model.head_init_scale=0.0"),
    _v("deep_8x96", "depth vs width", "model.d_model=96", "model.num_layers=8", "model.num_heads=4",
       "model.mlp_dim=256"),
    _v("wide_2x192", "depth vs width", "model.d_model=192", "model.num_layers=2", "model.num_heads=4",
       "model.mlp_dim=512"),
    # structure
    _v("shift", "shifted prediction (Dream)", "model.shift=True"),
    _v("ar_mix_0.25", "AR + diffusion mix", "noise.ar_fraction=0.25"),
    _v("ar_mix_0.5", "AR + diffusion mix", "noise.ar_fraction=0.5"),
    _v("shift_ar_mix_0.25", "AR + diffusion mix", "model.shift=True", "noise.ar_fraction=0.25"),
    _v("alibi", "attention locality (ALiBi)", "model.attention_bias='alibi'"),
    _v("shift_alibi", "attention locality (ALiBi)", "model.shift=True", "model.attention_bias='alibi'"),
    # combinations (second round: the single factors that helped, on top of shift)
    _v("shift_ar_mix_0.5", "AR + diffusion mix", "model.shift=True", "noise.ar_fraction=0.5"),
    _v("shift_ar_anneal_1_0", "AR -> diffusion curriculum", *CURRICULUM),
    _v("shift_ar_anneal_0.5_0", "AR -> diffusion curriculum", "model.shift=True", "noise.ar_fraction=0.5",
       "noise.ar_fraction_end=0.0"),
    _v("shift_mix_logitnormal", "combination", "model.shift=True", "noise.ar_fraction=0.25",
       "noise.time_distribution='logit_normal'"),
    _v("shift_mix_timecond", "combination", "model.shift=True", "noise.ar_fraction=0.25",
       "model.time_conditioning=True"),
    _v("shift_mix_batch16", "combination", "model.shift=True", "noise.ar_fraction=0.25", batch_size=16),
    # third round: the winners together
    _v("best3", "combination", *BEST3, batch_size=16),
    _v("best3_alibi", "combination", *BEST4, batch_size=16),
    _v("best3_batch8", "combination", *BEST3, batch_size=8),
    _v("best3_anneal_half", "combination", *BEST3, "noise.ar_anneal_end=0.5", batch_size=16),
    _v("best3_lr_1e-3", "combination", *BEST3, "train.lr=0.001", batch_size=16),
    _v("best4", "combination", *BEST4, batch_size=8),
    _v("best4_lr_3e-3", "combination", *BEST5, batch_size=8),
    _v("best4_batch4", "combination", *BEST4, batch_size=4),
    _v("best5", "combination", *BEST5, batch_size=4),
    _v("best5_lr_5e-3", "combination", *BEST4, "train.lr=0.005", batch_size=4),
    _v("best5_batch2", "combination", *BEST5, batch_size=2),
    _v("best5_flat", "loss weighting", *BEST5, "noise.weighting='flat'", batch_size=4),
    _v("best5_ema", "weight averaging", *BEST5, "train.ema_decay=0.995", batch_size=4),
    _v("best5_logit_mean_-0.5", "time distribution", *BEST5, "noise.logit_mean=-0.5", batch_size=4),
    _v("best5_logit_mean_0.5", "time distribution", *BEST5, "noise.logit_mean=0.5", batch_size=4),
    _v("best5_wd_0.1", "weight decay", *BEST5, "train.weight_decay=0.1", batch_size=4),
    _v("best5_seed1", "seed replicate", *BEST5, "train.seed=1", batch_size=4),
    # the uniform process (shorter: the original recipe and the factors that helped masked)
    _v("uniform_base", "uniform process", process="uniform", note="the original recipe"),
    _v("uniform_shift", "uniform process", "model.shift=True", process="uniform"),
    _v("uniform_logitnormal", "uniform process", "noise.time_distribution='logit_normal'", process="uniform"),
    _v("uniform_flat", "uniform process", "noise.weighting='flat'", process="uniform"),
    _v("uniform_shift_ar_mix_0.25", "uniform process", "model.shift=True", "noise.ar_fraction=0.25",
       process="uniform"),
    _v("uniform_best5", "uniform process", *BEST5, process="uniform", batch_size=4,
       note="the masked winner's recipe"),
    _v("uniform_shift_flat", "uniform process", "model.shift=True", "noise.weighting='flat'", process="uniform"),
    _v("uniform_best5_flat", "uniform process", *BEST5,
       "train.weight_decay=0.1", "noise.weighting='flat'", process="uniform", batch_size=4,
       note="the masked winner's recipe (with wd 0.1), trained on flat weighting"),
]
BY_NAME = {v.name: v for v in VARIANTS}


def experiment(variant: Variant, budget: int) -> ExperimentConfig:
    """The variant's config at ``budget`` times the quickstart's tokens."""
    exp = apply_overrides(original(variant.process), list(variant.overrides))
    steps = BASE_STEPS * budget * 32 // variant.batch_size
    warmup = exp.train.warmup_steps * 32 // variant.batch_size
    evals = 6 * budget
    return dataclasses.replace(
        exp,
        name=f"{variant.name}-x{budget}",
        train=dataclasses.replace(exp.train, steps=steps, batch_size=variant.batch_size,
                                  warmup_steps=warmup),
        loop=dataclasses.replace(exp.loop, eval_every=steps // evals, checkpoint_every=steps,
                                 log_every=max(steps // 12, 1), sample_steps=(), num_samples=1,
                                 eval_batches=4 * 32 // variant.batch_size),
    )


def read_curves(run_dir: Path) -> dict:
    """Bound and NLL-at-t curves (per eval step) from a run's metrics.jsonl."""
    curves: dict[str, list] = {"step": [], "val_loss": [], "nll_t0.10": [], "context": []}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "val_loss" not in rec:
            continue
        if curves["step"] and rec["step"] <= curves["step"][-1]:
            continue  # a re-evaluation of a finished run
        curves["step"].append(rec["step"])
        curves["val_loss"].append(rec["val_loss"])
        curves["nll_t0.10"].append(rec.get("nll_t0.10"))
        curves["context"].append({k[5:]: v for k, v in rec.items() if k.startswith("nll_t")})
    return curves


def network_as_ar(run_dir: Path) -> float:
    """The exact NLL per token of a diffusion run's network read as an AR model.

    The same parameters under a causal mask (``causal_B``): a shift model reads the clean
    sequence and predicts token i at position i - 1 (token 0 is not scored); any other reads
    [bos, x_1 .. x_{L-1}]. After an AR -> diffusion curriculum this says how much of its AR
    ability the network kept; beside the AR baseline it separates "the backbone learnt less"
    from "the any-order task is harder".
    """
    exp, graphdef, params, tok, _, _ = load_run(run_dir)
    mesh = make_mesh(exp.mesh)
    shift, bos = exp.model.shift, exp.model.special.bos

    @jax.jit
    def sums(p, tokens_BL, mask_BL):
        inputs = tokens_BL if shift else shift_right(tokens_BL, bos)
        causal_B = jnp.ones(tokens_BL.shape[:1], bool)
        t_B = jnp.full(tokens_BL.shape[:1], 0.5)
        logits = nnx.merge(graphdef, p, copy=True)(inputs, t_B, causal_B=causal_B)
        scored = mask_BL & ((jnp.arange(tokens_BL.shape[1]) > 0)[None] if shift else True)
        nll = token_nll(logits, tokens_BL, exp.model.num_tokens)
        return jnp.sum(jnp.where(scored, nll, 0.0)), jnp.sum(scored)

    total = count = 0.0
    with jax.set_mesh(mesh):
        for batch in eval_batches(exp, tok, mesh):
            a, b = sums(params, batch["tokens"], batch["loss_mask"])
            total, count = total + float(a), count + float(b)
    return total / count


def run_one(variant: Variant, budget: int, runs: Path) -> dict:
    exp = experiment(variant, budget)
    run_dir = runs / exp.name
    record_file = run_dir / "record.json"
    if record_file.exists():
        return json.loads(record_file.read_text())
    t0 = time.perf_counter()
    result = train(exp, run_dir, verbose=False)
    wall = time.perf_counter() - t0
    use = result["context_use"]
    record = {
        "variant": variant.name, "factor": variant.factor, "process": variant.process,
        "overrides": list(variant.overrides), "batch_size": variant.batch_size, "budget": budget,
        "steps": exp.train.steps, "tokens": exp.train.steps * exp.train.batch_size * exp.train.seq_len,
        "val_loss": result["val_loss"], "val_ppl": result["val_ppl"],
        "nll_t0.10": use.at(0.1), "unigram_entropy": use.unigram_entropy,
        "context": dict(zip((f"{t:.2f}" for t in use.times), use.nll, strict=True)),
        "context_ci95": dict(zip((f"{t:.2f}" for t in use.times), use.ci95, strict=True)),
        "wall_seconds": wall, "train_tokens_per_second": result["tokens_per_second"],
        "curves": read_curves(run_dir), "note": variant.note,
    }
    if variant.process != "ar":
        record["network_as_ar"] = network_as_ar(run_dir)
    record_file.write_text(json.dumps(record, indent=1))
    return record


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help=f"variants (default all): {sorted(BY_NAME)}")
    parser.add_argument("--budgets", nargs="*", type=int, default=[1])
    parser.add_argument("--runs", default="runs/learning")
    parser.add_argument("--out", default="benchmarks/learning")
    parser.add_argument("--report", action="store_true", help="only rebuild the report from saved runs")
    parser.add_argument("--backfill", action="store_true",
                        help="add measurements that older records lack (network_as_ar)")
    args = parser.parse_args(argv)
    names = args.only or [v.name for v in VARIANTS]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; expected some of {sorted(BY_NAME)}")
    runs = Path(args.runs)
    records = []
    t0 = time.perf_counter()
    for budget in args.budgets:
        for i, name in enumerate(names):
            exp_dir = runs / experiment(BY_NAME[name], budget).name
            if args.report:
                if (exp_dir / "record.json").exists():
                    rec = json.loads((exp_dir / "record.json").read_text())
                    if args.backfill and rec["process"] != "ar" and "network_as_ar" not in rec:
                        rec["network_as_ar"] = network_as_ar(exp_dir)
                        (exp_dir / "record.json").write_text(json.dumps(rec, indent=1))
                    records.append(rec)
                continue
            rec = run_one(BY_NAME[name], budget, runs)
            records.append(rec)
            print(f"[{i + 1}/{len(names)} x{budget}] {name:22s} bound {rec['val_loss']:.3f} "
                  f"(ppl {rec['val_ppl']:.1f}) | NLL@0.1 {rec['nll_t0.10']:.3f} | "
                  f"{rec['wall_seconds']:.0f}s | elapsed {time.perf_counter() - t0:.0f}s", flush=True)
    write_report(records, Path(args.out), known=set(BY_NAME))


if __name__ == "__main__":
    main()
