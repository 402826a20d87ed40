"""Tables and plots of the training-recipe study (``experiments.learning_study``)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _ar(records: list[dict], budget: int) -> dict | None:
    """The best AR run at this budget: diffusion is compared with AR at its own best recipe."""
    runs = [r for r in records if r["process"] == "ar" and r["budget"] == budget]
    return min(runs, key=lambda r: r["val_loss"]) if runs else None


def table(records: list[dict]) -> str:
    """Markdown: one row per (variant, budget), with the ppl ratio to AR at that budget."""
    lines = [
        "| variant | factor | budget | steps x batch | bound (nats) | bound ppl | ratio to best AR ppl "
        "| NLL @ t=0.1 | unigram - NLL@0.1 | network as AR | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(records, key=lambda r: (r["process"] != "ar", r["budget"], r["val_loss"])):
        ar = _ar(records, r["budget"])
        ratio = f"{math.exp(r['val_loss'] - ar['val_loss']):.2f}" if ar and r["process"] != "ar" else ""
        gap = r["unigram_entropy"] - r["nll_t0.10"]
        kind = "=" if r["process"] == "ar" else "≤"
        as_ar = f"{r['network_as_ar']:.3f}" if r.get("network_as_ar") is not None else ""
        lines.append(
            f"| {r['variant']} | {r['factor']} | {r['budget']}x | {r['steps']} x {r['batch_size']} | "
            f"{r['val_loss']:.3f} | {kind} {r['val_ppl']:.1f} | {ratio} | {r['nll_t0.10']:.3f} | "
            f"{gap:+.2f} | {as_ar} | {r['wall_seconds']:.0f} |"
        )
    return "\n".join(lines)


# The runs that tell the story, plotted alone beside the all-runs figure (which is crowded).
KEY_VARIANTS = ("ar", "ar_batch4_lr_3e-3_wd_0.1_alibi", "base", "logitnormal", "shift", "shift_ar_anneal_1_0",
                "best3", "best5", "best5_wd_0.1", "uniform_base", "uniform_flat", "uniform_best5_flat")


def plot(records: list[dict], out: Path) -> list[Path]:
    """Bound vs tokens, NLL@0.1 vs tokens, and the final context-use curves, per budget:
    ``curves_x{budget}.png`` (every run) and ``curves_x{budget}_key.png`` (``KEY_VARIANTS``)."""
    paths = []
    for budget in sorted({r["budget"] for r in records}):
        rows = [r for r in records if r["budget"] == budget]
        paths.append(_plot(rows, out / f"curves_x{budget}.png", budget))
        key = [r for r in rows if r["variant"] in KEY_VARIANTS]
        if key and len(key) < len(rows):
            paths.append(_plot(key, out / f"curves_x{budget}_key.png", budget))
    return paths


def _plot(rows: list[dict], path: Path, budget: int) -> Path:
    import matplotlib  # optional dependency (the [notebooks]/[test] extras)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    ar_styles = iter(["-", "--", ":", "-."] * 10)
    for r in sorted(rows, key=lambda r: r["val_loss"]):
        c = r["curves"]
        tokens = [s * r["batch_size"] * 128 / 1e6 for s in c["step"]]
        style = dict(lw=2.5, color="k", ls=next(ar_styles)) if r["process"] == "ar" else dict(lw=1)
        axes[0].plot(tokens, c["val_loss"], label=r["variant"], **style)
        if r["process"] != "ar":
            axes[1].plot(tokens, c["nll_t0.10"], label=r["variant"], **style)
            ts = [float(t) for t in r["context"]]
            axes[2].plot(ts, list(r["context"].values()), marker=".", label=r["variant"], **style)
        else:
            axes[2].axhline(r["val_loss"], lw=2.5, color="k", ls=style["ls"], label=f"{r['variant']} (AR exact NLL)")
    unigram = rows[0]["unigram_entropy"]
    for ax in axes[1:]:
        ax.axhline(unigram, color="grey", ls=":", label="unigram entropy")
    axes[0].set(xlabel="training tokens (M)", ylabel="validation nats/token (bound; AR exact)",
                title=f"bound vs tokens ({budget}x budget)")
    axes[1].set(xlabel="training tokens (M)", ylabel="NLL per masked token at t=0.1",
                title="context use at t = 0.1")
    axes[2].set(xlabel="t (mask rate)", ylabel="NLL per corrupted token (nats)",
                title="context use at the end of training")
    axes[2].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(records: list[dict], out: Path, known: set[str] | None = None) -> None:
    """``results.json`` (every record), ``results.md`` (the table) and the plots.

    Records already in ``results.json`` are kept (a partial rerun adds to the study) unless
    ``known`` is given and their variant is not in it (a variant since removed).
    """
    out.mkdir(parents=True, exist_ok=True)
    old = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else []
    old = [r for r in old if known is None or r["variant"] in known]
    merged = {(r["variant"], r["budget"]): r for r in old}
    merged.update({(r["variant"], r["budget"]): r for r in records})
    records = list(merged.values())
    (out / "results.json").write_text(json.dumps(records, indent=1))
    (out / "results.md").write_text(table(records) + "\n")
    plot(records, out)
    print(table(records))
