"""Results: the device, the targets, the JSON file and the markdown report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import numpy as np

from .setup import RANDOM_NOTE, SAMPLING_NOTE, SCAN_NOTE, TARGETS

# ---- results: JSON and markdown -------------------------------------------------------


def device_info(label: str | None, tiny: bool) -> tuple[dict, str]:
    """(device description, file slug)."""
    dev = jax.devices()[0]
    kind, platform = dev.device_kind, dev.platform
    info = {"device_kind": kind, "platform": platform, "num_devices": jax.device_count()}
    if platform == "cpu":
        info["cpu"] = _cpu_model()
    name = label or (platform if kind.lower() == platform else f"{platform}-{kind}")
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ("-tiny" if tiny else "")
    info["label"] = name
    return info, slug


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def targets(result: dict) -> list[dict]:
    """Each target of the issue with the measured figure and whether it is met (None: n/a)."""
    gpu, scan, tr = (
        result["device"]["platform"] == "gpu",
        result.get("scan"),
        _rows(result.get("training") or [None])[0],  # the default (layer scan) row
    )
    out = [
        dict(target=TARGETS["scan"], measured="not measured", met=None),
        dict(target=TARGETS["compile"], measured="not measured", met=None),
        dict(
            target=TARGETS["train_gpu" if gpu else "train_cpu"], measured="not measured", met=None
        ),
        dict(target=TARGETS["ar_gpu"], measured="no 256-token batch-1 records", met=None),
    ]
    if scan:
        scan = [scan] if isinstance(scan, dict) else scan  # files written before the rows per rule
        out[0].update(
            measured=", ".join(f"{s.get('rule', 'ancestral')} {s['ratio_vs_forward']:.2f} x" for s in scan)
            + f" (K={scan[0]['k']})",
            met=all(s["ratio_vs_forward"] <= 1.10 for s in scan),
        )
        out[1].update(measured=f"{scan[0]['compile_ratio']:.2f} x", met=scan[0]["compile_ratio"] <= 1.5)
    if tr:
        model = f"d_model={tr['model']['d_model']}, {tr['params'] / 1e6:.1f}M params, {tr['model']['dtype']}"
        out[2].update(
            measured=f"{tr['mfu']:.1%} ({model})", met=tr["mfu"] >= (0.40 if gpu else 0.50)
        )
    out.append(_draw_target(result.get("records", [])))
    out += _peer_targets(result.get("peer"))
    recs = [r for r in result.get("records", []) if r["length"] == 256 and r["batch"] == 1]
    ar = [r for r in recs if r["method"] == "ar-kv-cache"]
    diff = [r for r in recs if r["method"] != "ar-kv-cache"]
    if ar and diff:
        best = max(diff, key=lambda r: r["tokens_per_s"])
        ratio = best["tokens_per_s"] / ar[0]["tokens_per_s"]
        out[3].update(
            measured=f"{ratio:.2f} x (best: {best['name']})", met=(ratio >= 3.0) if gpu else None
        )
    return out


def _draw_target(records: list[dict]) -> dict:
    """Ancestral tokens/s with the inverse-CDF draw over the Gumbel draw, batch 1, 128 tokens."""
    pick = {r["method"]: r for r in records if r["batch"] == 1 and r["length"] == 128 and r["k"] == 16
            and r["method"] in ("ancestral", "ancestral-gumbel")}
    row = dict(target=TARGETS["draw"], measured="no K=16, 128-token batch-1 records", met=None)
    if len(pick) == 2:
        ratio = pick["ancestral"]["tokens_per_s"] / pick["ancestral-gumbel"]["tokens_per_s"]
        row.update(measured=f"{ratio:.2f} x ({pick['ancestral']['tokens_per_s']:,.0f} vs "
                            f"{pick['ancestral-gumbel']['tokens_per_s']:,.0f} tok/s)", met=ratio >= 1.5)
    return row


def _rows(section):
    """A section's rows: files written before the rows per variant hold one dict."""
    return [section] if isinstance(section, dict) else section


def _peer_targets(peer: dict | None) -> list[dict]:
    """Our train step and sampler step over md4's (peer mode; n/a without it)."""
    rows = [dict(target=TARGETS["peer_train"], measured="not measured (--peer md4)", met=None),
            dict(target=TARGETS["peer_sampler"], measured="not measured (--peer md4)", met=None)]
    if not peer:
        return rows
    tiny = " (tiny: not comparable)" if peer["tiny"] else ""
    train = peer["train"][0]  # the default layer scan
    rows[0].update(measured=f"{train['ratio']:.2f} x ({train['step_s']:.3f} vs {train['md4_step_s']:.3f} s){tiny}",
                   met=None if peer["tiny"] else train["ratio"] <= 0.8)
    worst = max(s["ratio"] for s in peer["sampler"])
    rows[1].update(measured=", ".join(f"K={s['k']} {s['ratio']:.2f} x" for s in peer["sampler"]) + tiny,
                   met=None if peer["tiny"] else worst <= 0.7)
    return rows


def write_results(result: dict, out_dir: Path, slug: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{slug}.json"
    path.write_text(json.dumps(result, indent=1, default=_jsonable))
    return path


def _jsonable(x):
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def render_markdown(results_dir) -> str:
    """A markdown report: one section per ``*.json`` result in ``results_dir``."""
    files = sorted(Path(results_dir).glob("*.json"))
    parts = [
        "# Benchmark results",
        "",
        "Generated by `python -m experiments.benchmark` from `" + str(results_dir) + "/*.json`; "
        "do not edit by hand. Method notes: the docstring of `experiments/benchmark/__init__.py`.",
        "",
    ]
    for f in files:
        parts += _device_section(json.loads(f.read_text()), f.name)
    return "\n".join(parts) + "\n"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]


def _device_section(res: dict, fname: str) -> list[str]:
    lines = _device_header(res, fname) + ["### Targets", ""]
    lines += _table(
        ["target", "measured", "met"],
        [[t["target"], t["measured"], _yes(t["met"])] for t in res["targets"]],
    )
    if res.get("records"):
        lines += ["### Sampling", ""]
        header = ("name|L|B|K|NFE|compile s|run s|s/sample|tok/s|outside passes|GFLOP|GB|GFLOP/s (% peak)|"
                  "GB/s (% peak)|FLOP/B|bound")
        lines += _table(header.split("|"), [_record_row(r) for r in res["records"]])
        lines += [SAMPLING_NOTE, ""]
    if res.get("scan"):
        lines += _scan_table(res["scan"])
    if res.get("training"):
        lines += _training_table(_rows(res["training"]))
    if res.get("peer"):
        lines += _peer_tables(res["peer"])
    return lines


def _device_header(res: dict, fname: str) -> list[str]:
    dev, cfg, peaks = res["device"], res["config"], res["peaks"]
    m = cfg["model"]
    return [
        f"## {dev['label']} ({dev['platform']}{', ' + dev['cpu'] if 'cpu' in dev else ''})",
        "",
        f"File `{fname}`; jax {res['jax_version']}; {res['date']}; {dev['num_devices']} device(s).",
        "",
        f"Sampling model ({'loaded from ' + cfg['run_dir'] if cfg.get('run_dir') else RANDOM_NOTE}): "
        f"d_model {m['d_model']}, {m['num_layers']} layers, {m['num_heads']} heads, {m['num_tokens']} tokens, "
        f"{m['dtype']}; sizes {cfg['sizes']}, batches {cfg['batches']}, block {cfg['block']}; "
        f"median of {cfg['reps']} runs after {cfg['warmup']} warm-up"
        f"{'; compiler options ' + str(cfg['compiler_options']) if cfg.get('compiler_options') else ''}.",
        "",
        f"Peaks (the best of {len(peaks.get('samples', [peaks]))} measurements, at the start and the end): "
        f"matmul {peaks['matmul']['flops_per_s'] / 1e9:,.1f} GFLOP/s ({peaks['matmul']['n']}^3 "
        f"{peaks['matmul']['dtype']}); copy {peaks['copy']['bytes_per_s'] / 1e9:,.1f} GB/s "
        f"({peaks['copy']['megabytes']} MB); machine balance {peaks['machine_balance']:.1f} FLOP/byte. "
        f"Cost: {res['cost']['method']}.",
        "",
    ]


_SCAN_CELLS = (("rule", "s"), ("k", "d"), ("length", "d"), ("scan_s", ".4f"), ("separate_forward_s", ".4f"),
               ("ratio_vs_forward", ".2f"), ("scanned_forward_s", ".4f"), ("ratio_vs_scanned_forward", ".2f"),
               ("python_loop_steps_s", ".4f"), ("ratio_vs_python_loop", ".2f"),
               ("compile_k8_s", ".2f"), ("compile_k1024_s", ".2f"), ("compile_ratio", ".2f"))


def _scan_table(rows) -> list[str]:
    rows = [rows] if isinstance(rows, dict) else rows
    k = rows[0]["k"]
    header = f"rule|K|L|scan s|{k} jitted forwards s|ratio|{k} forwards in one scan s|ratio|"
    header += f"Python loop of {k} jitted steps s|ratio|compile K=8 s|compile K=1024 s|ratio"
    cells = [[format(r[key], f) if key in r else "" for key, f in _SCAN_CELLS] for r in rows]
    return ["### Scan overhead (batch 1)", ""] + _table(header.split("|"), cells) + [SCAN_NOTE, ""]


def _training_table(rows: list[dict]) -> list[str]:
    out = []
    for t in rows:
        m = t["model"]
        out.append([
            f"d{m['d_model']} x {m['num_layers']}L {m['dtype']}", t.get("variant", "layer scan"),
            f"{t['params'] / 1e6:.2f}M", f"{t['batch']} x {t['seq_len']}", f"{t['compile_s']:.2f}",
            f"{t['step_s']:.4f}", f"{t['tokens_per_s']:,.0f}", f"{t['mfu']:.1%}",
        ])
    lines = ["### Training (synthetic tokens)", "", f"MFU = {rows[0]['formula']}.", ""]
    header = ["model", "layers", "params", "batch x seq", "compile s", "step s", "tok/s", "MFU"]
    return lines + _table(header, out)


def _peer_tables(p: dict) -> list[str]:
    m = p["model"]
    lines = [f"### Peer: md4 @ {p['md4_commit'][:8]} (its figures: benchmarks/peer_md4, jax {p['md4_jax']})", "",
             f"Our code at md4's configuration: V {m['num_tokens']}, L {p['seq_len']}, {m['num_layers']} x "
             f"{m['d_model']} ({m['num_heads']} heads), MLP {m['mlp_dim']}, adaLN time conditioning, "
             f"{m['dtype']}; md4 {p['md4_config']['param_count'] / 1e6:.2f}M params."
             + (" Tiny run: a shrunk model, not comparable." if p["tiny"] else ""), ""]
    train = [[r["variant"], f"{r['params'] / 1e6:.2f}M", f"{p['train_batch']} x {p['seq_len']}",
              f"{r['step_s']:.4f}", f"{r['md4_step_s']:.4f}", f"{r['ratio']:.2f}"] for r in p["train"]]
    lines += _table(["train step (ours)", "params", "batch x seq", "ours s", "md4 s", "ratio"], train)
    samp = [[s["k"], f"{p['sample_batch']} x {p['seq_len']}", s["passes"], f"{s['per_step_s']:.4f}", s["md4_passes"],
             f"{s['md4_per_step_s']:.4f}", f"{s['ratio']:.2f}"] for s in p["sampler"]]
    lines += _table(["ancestral K", "batch x L", "our passes", "ours s/step", "md4 passes", "md4 s/step", "ratio"],
                    samp)
    return lines + ["md4 runs K + 1 network passes (a final decode at t = 0); per step = run time / K for both.", ""]


def _yes(met) -> str:
    return "n/a" if met is None else ("yes" if met else "**no**")


def _record_row(r: dict) -> list:
    k = f"{r['k']}/blk" if r["block"] else r["k"]
    return [
        r["name"],
        r["length"],
        r["batch"],
        k,
        f"{r['nfe_mean']:.1f}",
        f"{r['compile_s']:.2f}",
        f"{r['run_s']:.4f}",
        f"{r['s_per_sample']:.4f}",
        f"{r['tokens_per_s']:,.1f}",
        f"{r['outside_forward']:.0%}" if r.get("outside_forward") is not None else "",
        f"{r['flops'] / 1e9:,.2f}",
        f"{r['bytes'] / 1e9:,.3f}",
        f"{r['flops_per_s'] / 1e9:,.1f} ({r['frac_peak_flops']:.1%})",
        f"{r['bytes_per_s'] / 1e9:,.1f} ({r['frac_peak_bytes']:.1%})",
        f"{r['intensity']:.1f}",
        r["bound"],
    ]
