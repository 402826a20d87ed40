"""The steps / quality / speed trade-off: sample at each (step rule, K), score, time.

Every record holds the rule, K, mean NFE per sample, the sample-quality report (judge gen
ppl, entropy, distinct-n, repetition), the wall-clock time of generating all samples with
compile time measured separately (the first batch is run twice: compile + run, then run;
compile = the first call less a timed batch),
and tokens/s = generated positions / run time. AR sampling at several temperatures goes
through the same path (``ar_records``), so diffusion and AR sit in one table and one plot.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dllm_jax.evaluation.quality import quality_report
from dllm_jax.evaluation.speed import timed_batches
from dllm_jax.sampling.draws import Logits
from dllm_jax.sampling.generate import generate
from dllm_jax.sampling.kv_decode import ar_generate


def _record(name, num_steps, tokens_BL, nfe_B, compile_s, run_s, length, quality_kw, **extra):
    pad = quality_kw["pad_id"]
    tokens_BL = np.where(tokens_BL < 0, pad, tokens_BL)
    report = quality_report(tokens_BL, **quality_kw)
    generated = tokens_BL.shape[0] * length
    return {
        "rule": name, "num_steps": num_steps, "nfe": float(np.mean(nfe_B)), **extra,
        **report, "compile_s": compile_s, "time_s": run_s,
        "generated_tokens": generated, "tokens_per_s": generated / run_s,
        "time_per_sample_s": run_s / tokens_BL.shape[0],
    }


def diffusion_records(
    graphdef, params, rules: Mapping[str, object], steps: Sequence[int], *, length: int,
    num_samples: int, batch_size: int, quality_kw: dict, seed: int = 0, eos_id=None,
    block_size=None, cache="none", log=print, samples: dict | None = None,
) -> list[dict]:
    """One record per (rule name, K): unconditional samples of ``length`` tokens.

    ``quality_kw`` goes to ``quality_report`` (eos_id, pad_id, judge_logits_fn, bos_id).
    ``samples``, if given, receives each setting's tokens under (rule name, K).
    """
    records = []
    for name, rule in rules.items():
        for k in steps:
            run = lambda idx, rule=rule, k=k: generate(
                graphdef, params, [[]] * len(idx), length=length, rule=rule, num_steps=k, seed=seed,
                indices=idx, eos_id=eos_id, block_size=block_size, cache=cache,
            )
            toks, nfe, c, r = timed_batches(run, num_samples, batch_size)
            if samples is not None:
                samples[name, k] = toks
            records.append(_record(name, k, toks, nfe, c, r, length, quality_kw, kind="diffusion"))
            log(_line(records[-1]))
    return records


def ar_records(
    graphdef, params, temperatures: Sequence[float], *, length: int, num_samples: int,
    batch_size: int, quality_kw: dict, seed: int = 0, eos_id=None, log=print,
) -> list[dict]:
    """One record per temperature: AR KV-cache decoding of ``length`` tokens."""
    records = []
    for temp in temperatures:
        run = lambda idx, temp=temp: ar_generate(
            graphdef, params, [[]] * len(idx), length=length, logits=Logits(temperature=temp),
            seed=seed, indices=idx, eos_id=eos_id,
        )
        toks, nfe, c, r = timed_batches(run, num_samples, batch_size)
        records.append(_record(f"ar T={temp:g}", length, toks, nfe, c, r, length, quality_kw,
                               kind="ar", temperature=temp))
        log(_line(records[-1]))
    return records


def _line(r: dict) -> str:
    ppl = "-" if r["gen_ppl"] is None else f"{r['gen_ppl']:.2f}"
    return (f"  {r['rule']:>16s} K={r['num_steps']:<5d} NFE={r['nfe']:7.1f} gen_ppl={ppl:>9s} "
            f"entropy={r['entropy']:.3f} rep_4={r['rep_4']:.3f} tok/s={r['tokens_per_s']:9.1f} "
            f"compile={r['compile_s']:.1f}s")


def matched_entropy(diffusion: Sequence[dict], ar: Sequence[dict]) -> list[dict]:
    """AR gen ppl interpolated at each diffusion record's entropy.

    Lower temperature wins gen ppl trivially by losing entropy, so diffusion is compared with
    AR at the same sample entropy: log gen ppl of the AR temperature sweep is interpolated
    linearly in entropy (None outside the AR sweep's entropy range).
    """
    pts = sorted((r["entropy"], np.log(r["gen_ppl"])) for r in ar if r["gen_ppl"])
    out = []
    for r in diffusion:
        ar_ppl = None
        if len(pts) >= 2 and r["gen_ppl"] and pts[0][0] <= r["entropy"] <= pts[-1][0]:
            ar_ppl = float(np.exp(np.interp(r["entropy"], [p[0] for p in pts], [p[1] for p in pts])))
        out.append({**r, "ar_gen_ppl_at_entropy": ar_ppl})
    return out


def write_records(records: Sequence[dict], out_dir: str | Path, name: str = "sweep") -> dict[str, Path]:
    """Write ``name``.json and ``name``.csv, and PNG plots: quality vs steps, quality vs speed,
    and (given ``revision_records``' rows) quality and revisions vs correction rounds."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "csv": out / f"{name}.csv"}
    paths["json"].write_text(json.dumps(list(records), indent=1))
    keys = sorted({k for r in records for k in r})
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(records)
    paths.update(plot_records([r for r in records if r.get("kind") != "revision"], out, name))
    paths.update(plot_revisions([r for r in records if r.get("kind") == "revision"], out, name))
    return paths


def pareto_front(records: Sequence[dict]) -> list[dict]:
    """Records not beaten on both gen ppl (lower) and tokens/s (higher) by another one."""
    scored = [r for r in records if r.get("gen_ppl") and "tokens_per_s" in r]
    return sorted(
        (r for r in scored if not any(
            o["gen_ppl"] <= r["gen_ppl"] and o["tokens_per_s"] >= r["tokens_per_s"]
            and (o["gen_ppl"] < r["gen_ppl"] or o["tokens_per_s"] > r["tokens_per_s"]) for o in scored)),
        key=lambda r: r["tokens_per_s"],
    )


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_revisions(records: Sequence[dict], out: Path, name: str) -> dict[str, Path]:
    """Gen ppl, entropy and the shares of corrections / worsening changes against the number
    of correction rounds, one line per (rule, K); none for a single number of rounds."""
    scored = [r for r in records if r.get("gen_ppl")]
    if len({r["rounds"] for r in scored}) < 2:
        return {}
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for i, key in enumerate(dict.fromkeys((r["rule"], r["num_steps"]) for r in scored)):
        rs = sorted((r for r in scored if (r["rule"], r["num_steps"]) == key), key=lambda r: r["rounds"])
        x, style = [r["rounds"] for r in rs], {"color": f"C{i % 10}", "label": f"{key[0]} K={key[1]}"}
        axes[0].plot(x, [r["gen_ppl"] for r in rs], "o-", **style)
        axes[1].plot(x, [r["entropy"] for r in rs], "o-", **style)
        shares = [(r["rounds"], r["correction_share"], r["worsened_share"]) for r in rs if r["correction_share"] is not None]
        axes[2].plot([s[0] for s in shares], [s[1] for s in shares], "o-", **dict(style, label=style["label"] + ": corrections"))
        axes[2].plot([s[0] for s in shares], [s[2] for s in shares], "x--", **dict(style, label=style["label"] + ": worsened"))
    for ax, label in zip(axes, ("judge gen ppl", "unigram entropy (nats)", "share of changed tokens"), strict=True):
        ax.set_xlabel("correction rounds (1 NFE each) after K steps")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / f"{name}_revision.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"revision_png": path}


def plot_records(records: Sequence[dict], out: Path, name: str) -> dict[str, Path]:
    plt = _pyplot()
    scored = [r for r in records if r.get("gen_ppl")]
    if not scored:
        return {}
    paths = {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for rule in dict.fromkeys(r["rule"] for r in scored if r.get("kind") != "ar"):
        rs = sorted((r for r in scored if r["rule"] == rule), key=lambda r: r["num_steps"])
        axes[0].plot([r["num_steps"] for r in rs], [r["gen_ppl"] for r in rs], "o-", label=rule)
        axes[1].plot([r["num_steps"] for r in rs], [r["entropy"] for r in rs], "o-", label=rule)
    for r in (r for r in scored if r.get("kind") == "ar"):
        axes[0].axhline(r["gen_ppl"], ls="--", lw=0.8, color="gray")
        axes[0].annotate(r["rule"], (axes[0].get_xlim()[0], r["gen_ppl"]), fontsize=7, color="gray")
    for ax, label in zip(axes, ("judge gen ppl", "unigram entropy (nats)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("steps K")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    fig.tight_layout()
    paths["steps_png"] = out / f"{name}_quality_vs_steps.png"
    fig.savefig(paths["steps_png"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for kind, marker in (("diffusion", "o"), ("ar", "s")):
        rs = [r for r in scored if r.get("kind", "diffusion") == kind]
        ax.scatter([r["tokens_per_s"] for r in rs], [r["gen_ppl"] for r in rs], marker=marker, label=kind)
        for r in rs:
            ax.annotate(f"{r['rule']} K={r['num_steps']}" if kind != "ar" else r["rule"],
                        (r["tokens_per_s"], r["gen_ppl"]), fontsize=6)
    front = pareto_front(scored)
    ax.plot([r["tokens_per_s"] for r in front], [r["gen_ppl"] for r in front], "k--", lw=0.8, label="Pareto front")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens / s")
    ax.set_ylabel("judge gen ppl")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths["speed_png"] = out / f"{name}_quality_vs_speed.png"
    fig.savefig(paths["speed_png"], dpi=110)
    plt.close(fig)
    return paths
