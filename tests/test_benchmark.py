"""The benchmark runs end to end at tiny size and its JSON and report are self-consistent."""

import json

import pytest

from experiments import benchmark
from experiments.benchmark.peer import REFERENCE_DIR


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    out = root / "results"
    result = benchmark.main(["--tiny", "--out", str(out)])
    files = list(out.glob("*.json"))
    assert len(files) == 1 and files[0].name.endswith("-tiny.json")
    return json.loads(files[0].read_text()), (root / "RESULTS.md").read_text(), result


def records_by(result, method, **match):
    return [
        r
        for r in result["records"]
        if r["method"] == method and all(r[k] == v for k, v in match.items())
    ]


def test_resolve_steps():
    assert benchmark.resolve_steps(("16", "L", "4L", "256", "L"), 32) == [16, 32, 128]


@pytest.mark.slow
def test_json_is_what_main_returned_and_peaks_are_measured(run):
    saved, _, returned = run
    assert saved["records"] == json.loads(json.dumps(returned["records"]))
    assert saved["jax_version"] and saved["date"] and saved["device"]["platform"]
    peaks = saved["peaks"]
    assert peaks["matmul"]["flops_per_s"] > 0 and peaks["copy"]["bytes_per_s"] > 0
    assert peaks["machine_balance"] == pytest.approx(
        peaks["matmul"]["flops_per_s"] / peaks["copy"]["bytes_per_s"]
    )
    assert len(peaks["samples"]) == 2  # start and end of the run: the best of each is kept
    best = max(p["matmul"]["flops_per_s"] for p in peaks["samples"])
    assert peaks["matmul"]["flops_per_s"] == best
    assert peaks["copy"]["bytes_per_s"] == max(p["copy"]["bytes_per_s"] for p in peaks["samples"])


@pytest.mark.slow
def test_every_record_is_consistent(run):
    result, _, _ = run
    balance = result["peaks"]["machine_balance"]
    assert result["records"]
    for r in result["records"]:
        assert r["tokens"] == r["batch"] * r["length"]
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["run_s"], rel=1e-9)
        assert r["s_per_sample"] == pytest.approx(r["run_s"] / r["batch"], rel=1e-9)
        assert r["compile_s"] > 0 and r["run_s"] > 0  # compile time is its own field
        assert r["bound"] in ("compute", "memory")
        assert (r["bound"] == "compute") == (r["intensity"] >= balance)
        assert r["flops_per_s"] == pytest.approx(r["flops"] / r["run_s"], rel=1e-9)
        # The layer-scan correction: XLA's total agrees with the matmul formula (uncorrected
        # it would count one of the two layers, about 0.55 of the formula at this size).
        assert 0.9 < r["flops"] / r["flops_analytic"] < 1.3, r["name"]


@pytest.mark.slow
def test_nfe_follows_each_method(run):
    result, _, _ = run
    block = result["config"]["block"]
    for r in records_by(result, "ancestral"):
        assert r["nfe_mean"] == r["nfe_max"] == r["k"]  # one pass per step, single block
    for r in records_by(result, "ar-kv-cache"):
        assert r["nfe_mean"] == r["length"]
    for r in records_by(result, f"approx-cache-blk{block}"):  # K steps + one refresh per block
        assert r["nfe_mean"] == (r["length"] // block) * (r["k"] + 1)
    for r in records_by(result, f"exact-cache-blk{block}"):  # K steps per block, writes fused but the last
        assert r["nfe_mean"] == (r["length"] // block) * r["k"] + 1
    cached = records_by(result, "cached")
    assert cached
    for r in cached:
        assert r["k"] > r["length"]
        (anc,) = records_by(result, "ancestral", k=r["k"], length=r["length"], batch=r["batch"])
        assert r["nfe_mean"] < anc["nfe_mean"]
        # The same pass shape: FLOPs per pass agree.
        assert r["flops"] / r["passes"] == pytest.approx(anc["flops"] / anc["passes"], rel=1e-9)


@pytest.mark.slow
def test_scan_training_and_targets(run):
    result, _, _ = run
    assert [s["rule"] for s in result["scan"]] == ["ancestral", "threshold0.9"]
    for scan in result["scan"]:
        for ratio, reference in [("ratio_vs_forward", "separate_forward_s"),
                                 ("ratio_vs_scanned_forward", "scanned_forward_s"),
                                 ("ratio_vs_python_loop", "python_loop_steps_s")]:
            assert scan[ratio] == pytest.approx(scan["scan_s"] / scan[reference])
    first = result["scan"][0]
    assert first["compile_ratio"] == pytest.approx(first["compile_k1024_s"] / first["compile_k8_s"])
    assert [t["variant"] for t in result["training"]] == ["layer scan", "unrolled"]
    for train in result["training"]:
        assert train["tokens_per_s"] == pytest.approx(train["batch"] * train["seq_len"] / train["step_s"])
        assert 0 < train["mfu"] < 1
    assert result["training"][1]["model"]["scan_unroll"] == result["training"][1]["model"]["num_layers"]
    assert {t["target"] for t in result["targets"]} >= {
        benchmark.TARGETS[k] for k in ("scan", "compile", "train_cpu", "draw")
    }


@pytest.mark.slow
def test_passes_timed_alone_and_the_gumbel_row(run):
    """Each record's bare-pass seconds and the share outside them; the old draw is its own program."""
    result, _, _ = run
    for r in result["records"]:
        assert r["forward_s"] > 0
        assert r["outside_forward"] == pytest.approx(1 - r["forward_s"] / r["run_s"])
    for gumbel in records_by(result, "ancestral-gumbel"):
        assert gumbel["draw"] == "gumbel"
        (anc,) = records_by(result, "ancestral", k=gumbel["k"], length=gumbel["length"], batch=gumbel["batch"])
        assert anc["draw"] == "inverse_cdf" and anc["nfe_mean"] == gumbel["nfe_mean"]
        # a program of its own (traced afresh), not the inverse-CDF one from jit's cache
        assert anc["xla_program"] != gumbel["xla_program"]


@pytest.mark.slow
def test_markdown_lists_every_record(run):
    result, markdown, _ = run
    assert result["device"]["label"] in markdown and result["jax_version"] in markdown
    for r in result["records"]:
        assert f"| {r['name']} |" in markdown
    for t in result["targets"]:
        assert t["target"] in markdown


@pytest.mark.parametrize(
    "flags",
    [["--steps", "16,0"], ["--steps", "x"], ["--sizes", "0"], ["--sections", "sampling,nope"], ["--peer", "sedd"]],
)
def test_bad_flags_are_refused(flags):
    with pytest.raises(ValueError):
        benchmark.default_setup(benchmark.parse_args(["--tiny", *flags]), "cpu")


@pytest.mark.slow
def test_peer_mode_runs_md4s_configuration_beside_its_recorded_figures(tmp_path):
    """``--peer md4`` alone (tiny): our train/sampler rows beside md4's figures from
    benchmarks/peer_md4, with md4's commit; the ratios are ours over md4's."""
    out = tmp_path / "results"
    result = benchmark.main(["--tiny", "--sections", "", "--peer", "md4", "--out", str(out)])
    peer, ref = result["peer"], json.loads((REFERENCE_DIR / "md4_cpu.json").read_text())
    assert peer["md4_commit"] == ref["md4_commit"] and len(peer["md4_commit"]) == 40
    assert [r["variant"] for r in peer["train"]] == ["layer scan", "unrolled"]
    for r in peer["train"]:
        assert r["md4_step_s"] == ref["results"]["train_step_s"]
        assert r["ratio"] == pytest.approx(r["step_s"] / r["md4_step_s"])
    assert [s["md4_per_step_s"] for s in peer["sampler"]] == [
        v["per_step_s"] for v in ref["results"]["sampler"].values()]
    for s in peer["sampler"]:
        assert s["passes"] == s["k"] and s["per_step_s"] == pytest.approx(s["run_s"] / s["k"])
    targets = {t["target"]: t for t in result["targets"]}
    assert targets[benchmark.TARGETS["peer_train"]]["met"] is None  # tiny: not comparable
    assert "### Peer: md4" in (tmp_path / "RESULTS.md").read_text()
