"""Every shipped experiment config parses, validates, and trains one step at test size."""

import json

import numpy as np
import pytest

from dllm_jax.agent import STATUSES, chat
from dllm_jax.data.corpus import embedded_corpus
from dllm_jax.data.tfds_builder import build_local_tfds
from dllm_jax.data.tool_task import registry, write_task
from dllm_jax.training.loop import train, with_overrides
from experiments import block_study, configs, sft, tool_eval
from experiments import chat as chat_cli
from experiments.cli import apply_overrides, experiment_from_args, experiment_parser
from experiments.draft_acceptance import redraft_passes_per_token, tokens_per_pass


@pytest.fixture(scope="module")
def tfds_source(tmp_path_factory):
    """A real array_record TFDS dataset built from local text (stands in for lm1b / c4)."""
    root = tmp_path_factory.mktemp("tfds")
    texts = root / "texts"
    texts.mkdir()
    for i, doc in enumerate(embedded_corpus("train").texts[:600]):
        (texts / f"doc{i:04d}.txt").write_text(doc, encoding="utf-8")
    builder = build_local_tfds([texts], root / "data")
    return f"tfds:{builder.name}@{root / 'data'}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(configs.EXPERIMENTS))
def test_every_config_trains_one_step_shrunk(name, tfds_source, tmp_path):
    full = configs.get(name)
    exp = configs.shrink(full)
    if full.data.source.startswith("tfds:"):
        exp = with_overrides(exp, data={"source": tfds_source, "vocab_size": 512}, model={"num_tokens": 512})
    if full.data.source.startswith("chat:"):
        task = write_task(tmp_path / "task", {"train": 400, "validation": 16})
        exp = with_overrides(exp, data={"source": f"chat:{task}", "vocab_size": 320}, model={"num_tokens": 320})
    result = train(exp, tmp_path / name, verbose=False)
    assert result["end_step"] == 1 and len(result["losses"]) == 1
    # One step from a random init: the loss is near log(vocab) for AR, finite and positive.
    assert 0 < result["losses"][0] < 50
    assert 0 < result["val_loss"] < 50
    assert (tmp_path / name / "checkpoints").exists()


def test_full_configs_are_valid_and_distinct():
    for name in configs.EXPERIMENTS:
        for process in ("masked", "uniform", "ar"):
            exp = configs.get(name, process)
            assert exp.noise.process == process
            assert (exp.model.attention == "causal") == (process == "ar")
    assert configs.owt().model.max_len == 1024 and configs.owt().model.d_model == 768


def test_cli_overrides():
    args = experiment_parser("x").parse_args(
        ["--config", "quickstart", "--set", "train.steps=7", "model.d_model=64", "loop.sample_steps=[4,8]",
         "data.source=local:some/dir"])
    exp = experiment_from_args(args)
    assert exp.train.steps == 7 and exp.model.d_model == 64
    assert exp.loop.sample_steps == (4, 8) and exp.data.source == "local:some/dir"
    with pytest.raises(ValueError, match="unknown field 'depth' of model"):
        apply_overrides(configs.quickstart(), ["model.depth=3"])
    with pytest.raises(ValueError, match="must look like section.field=value"):
        apply_overrides(configs.quickstart(), ["train.steps"])
    with pytest.raises(ValueError, match="num_heads=5 must divide d_model=128"):
        apply_overrides(configs.quickstart(), ["model.num_heads=5"])
    with pytest.raises(ValueError, match="unknown experiment 'gpt5'"):
        configs.get("gpt5")


@pytest.mark.slow
def test_compare_and_sweep_end_to_end(tmp_path):
    """compare.py --smoke trains three tiny runs and writes a consistent report; sweep_steps
    then runs on its checkpoints."""
    import json

    from experiments import compare, sweep_steps

    report = compare.main(["--run_dir", str(tmp_path), "--smoke"])
    # Two sweep rows (K = 2, 8) and the batch-1 latency row.
    assert (tmp_path / "report.md").read_text().count("| ancestral |") == 3
    lk = report["likelihood"]
    assert lk["diffusion"]["params"] == lk["ar"]["params"]  # same backbone, same size
    assert lk["diffusion"]["tokens_seen"] == lk["ar"]["tokens_seen"]
    assert lk["ar"]["exact"] and lk["ar"]["ci95"] == 0 and lk["diffusion"]["ci95"] > 0
    # Blocks of 4 over 8 tokens, 2 steps each: recomputation spends 2 passes per block, the
    # approximate cache one more (its refresh pass) per block.
    blk = {r["rule"].split("cache=")[1]: r for r in report["blocks"]["records"]}
    assert blk["none"]["nfe"] == 2 * 2 and blk["approximate"]["nfe"] == 2 * 3
    assert 0.0 <= report["blocks"]["agreement"] <= 1.0
    for r in report["likelihood"].values():
        assert abs(r["bits_per_token"] - r["nats_per_token"] / np.log(2)) < 1e-9
    from experiments import evaluate

    # The context-use diagnostic: one curve per saved diffusion checkpoint, AR as reference.
    ctx = report["context_use"]
    assert len(ctx["curves"]) >= 1 and (tmp_path / "context_use.png").stat().st_size > 1000
    curve = next(iter(ctx["curves"].values()))
    assert len(curve["nll"]) == len(curve["times"]) and all(np.isfinite(curve["nll"]))
    assert ctx["ar_nll"] == pytest.approx(lk["ar"]["nats_per_token"], rel=1e-4)
    assert "## Context use" in (tmp_path / "report.md").read_text()
    # Self-correction at the middle K (8): zero rounds are the sweep's own ancestral K = 8
    # samples (same keys, scored up to the first eos), two rounds cost two more passes.
    rev = report["revision"]
    assert [r["rounds"] for r in rev] == [0, 2] and [r["nfe"] for r in rev] == [8, 10]
    assert rev[0]["changed_per_sample"] == 0 and rev[0]["correction_share"] is None
    sweep_row = next(r for r in report["records"] if r["rule"] == "ancestral" and r["num_steps"] == 8)
    assert rev[0]["gen_ppl"] == pytest.approx(sweep_row["gen_ppl"], rel=1e-6)
    assert "## Self-correction" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "sweep_revision.png").stat().st_size > 1000
    ev = evaluate.main([str(tmp_path / "diffusion"), "--time_points", "2", "--batches", "1",
                        "--context_times", "0.1", "0.5"])
    assert ev["time_points"] == 2 and ev["ci95"] > 0 and ev["bits_per_byte"] > 0
    assert list(ev["context_use"]["times"]) == [0.1, 0.5] and ev["context_use"]["corrupted"][0] > 0
    assert ev["perplexity"] == pytest.approx(np.exp(ev["nats_per_token"]))
    records = sweep_steps.main([
        "--run_dir", str(tmp_path / "diffusion"), "--judge", str(tmp_path / "judge"),
        "--ar_run", str(tmp_path / "ar"), "--rules", "ancestral", "cached",
        "--steps", "2", "32", "--length", "8", "--num_samples", "4", "--batch_size", "2",
        "--temperatures", "1.0", "--out", str(tmp_path / "sweep"), "--revise_rounds", "0", "3",
        "--revise_steps", "2",
    ])
    saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert saved == json.loads(json.dumps(records))
    revised = [r for r in saved if r["kind"] == "revision"]
    saved = [r for r in saved if r["kind"] != "revision"]
    by = {(r["rule"], r["num_steps"]): r for r in saved}
    assert [(r["rounds"], r["nfe"]) for r in revised] == [(0, 2), (3, 5)]
    assert revised[0]["gen_ppl"] == pytest.approx(by["ancestral", 2]["gen_ppl"], rel=1e-6)
    assert revised[1]["changed_per_sample"] > 0 and 0 <= revised[1]["correction_share"] <= 1
    assert (tmp_path / "sweep" / "sweep_revision.png").stat().st_size > 1000
    for k in (2, 32):
        assert by["ancestral", k]["nfe"] == k  # one pass per step, single block
    # 8 positions, 32 steps: most steps unmask nothing, and the cache skips them.
    assert by["cached", 32]["nfe"] < 32
    for r in saved:
        assert r["tokens_per_s"] == pytest.approx(r["generated_tokens"] / r["time_s"])
        # compare already compiled some of these programs in this process: compile may be 0.
        assert r["compile_s"] >= 0 and r["gen_ppl"] > 1
    assert (tmp_path / "sweep" / "sweep_quality_vs_speed.png").stat().st_size > 1000
    with pytest.raises(SystemExit):  # refused before any sampling
        sweep_steps.main(["--run_dir", str(tmp_path / "diffusion"), "--revise_t", "1.5"])
    from experiments import revision_study

    revision_study.main([
        "--run", f"m={tmp_path / 'diffusion'}", "--judge", str(tmp_path / "judge"), "--samples", "2",
        "--length", "8", "--steps", "2", "--rounds", "0", "2", "--demo_rounds", "1", "--out", str(tmp_path / "rev"),
    ])
    study = json.loads((tmp_path / "rev" / "results.json").read_text())[0]
    assert [(r["rounds"], r["nfe"]) for r in study["sampling"]] == [(0, 2), (2, 4)]
    assert study["sampling"][0]["changed_per_sample"] == 0
    assert all(0 <= d["restored"] <= 1 and 0 <= d["broken"] <= 1 for d in study["demo"])
    assert "| m |" in (tmp_path / "rev" / "results.md").read_text()
    assert (tmp_path / "rev" / "results_revision.png").stat().st_size > 1000


@pytest.mark.slow
def test_quickstart_runs_its_three_phases_at_test_size(tmp_path, capsys):
    """AR, an AR phase, block diffusion adapted from it: equal tokens, the speed/quality report."""
    import json

    from experiments import quickstart

    quickstart.main(["--run_dir", str(tmp_path), "--eval_samples", "2", "--length", "8", "--set", "train.steps=2",
                     "model.d_model=32", "model.num_layers=1", "model.mlp_dim=64", "loop.eval_batches=1",
                     "loop.num_samples=1", "loop.sample_length=8"])
    out = capsys.readouterr().out
    assert "equal training tokens (1,024)" in out and "initialised from" in out
    report = json.loads((tmp_path / "speed_quality.json").read_text())
    summary = report["summary"]
    assert summary["block_size"] == 4 and summary["length"] == 8
    # one token per step with the exact cache: K = 4 passes per block, writes fused except the last
    assert summary["one_per_step_passes_per_token"] == pytest.approx((2 * 4 + 1) / 8)
    assert summary["batch1_tokens_per_s"] > 0 and summary["ar_batch1_tokens_per_s"] > 0
    # the staggered re-evaluation at stagger 0 is the block NELBO that training reported
    line = next(line for line in out.splitlines() if "+ block-4" in line).split()
    printed = float(line[line.index("steps") + 1])
    assert "stagger 0.5" in out and "left to right inside each block" in out
    assert block_study.staggered_bounds(tmp_path / "diffusion", (0.0,))["0"] == pytest.approx(printed, abs=1e-4)
    # the exact left-to-right NLL is what the stagger-1 Monte Carlo bound estimates
    bounds = block_study.staggered_bounds(tmp_path / "diffusion", (1.0,), time_points=16, with_ci=True,
                                          left_to_right=True)
    (mc, ci), exact = bounds["1"], bounds["left_to_right"]
    print(f"stagger 1: Monte Carlo {mc:.4f} +- {ci:.4f}, exact {exact:.4f}")
    assert abs(mc - exact) < 1.5 * ci


TINY = ["model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.mlp_dim=64", "train.steps=2",
        "train.warmup_steps=0", "train.batch_size=4", "loop.eval_every=2", "loop.checkpoint_every=2",
        "loop.eval_batches=1", "loop.log_every=1"]


@pytest.mark.slow
def test_sft_chat_and_tool_eval_end_to_end(tmp_path, capsys):
    """SFT from scratch (writing the task), SFT from that run, the terminal chat (canvas and
    calls shown) and the task's evaluation, at test size."""
    task, run, tuned = tmp_path / "task", tmp_path / "run", tmp_path / "tuned"
    sft.main(["--process", "masked", "--data", str(task), "--run_dir", str(run), "--set", *TINY])
    assert (task / "test.jsonl").exists() and (run / "checkpoints").exists()
    sft.main(["--data", str(task), "--init_from", str(run), "--run_dir", str(tuned), "--set", *TINY])
    tuned_config = json.loads((tuned / "config.json").read_text())
    assert tuned_config["train"]["init_from"] == str(run) and tuned_config["data"]["source"] == f"chat:{task}"
    assert (tuned / "tokenizer.model").read_bytes() == (run / "tokenizer.model").read_bytes()
    capsys.readouterr()
    chat_cli.main([str(tuned), "--message", "What is 2 plus 3?"])
    out = capsys.readouterr().out
    assert "assistant:" in out and "network passes" in out and "\u00b7" in out  # the canvas showed masks
    tool_eval.main([str(tuned), "--data", str(task), "--limit", "4", "--out", str(tmp_path / "out")])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results[0]["questions"] >= 1 and 0 <= results[0]["well_formed_calls"] <= 1
    assert (tmp_path / "out" / "transcript.txt").read_text().count("user:") == 1


@pytest.mark.slow
@pytest.mark.parametrize("process, attention", [("masked", "bidirectional"), ("uniform", "block_causal"),
                                                ("hybrid", "block_causal"), ("ar", "causal")])
def test_sft_trains_every_objective_and_chats(process, attention, tmp_path):
    """SFT on conversations for every objective, then the chat driver on the run."""
    task = write_task(tmp_path / "task", {"train": 400, "validation": 16, "test": 4})
    tiny = [*TINY, "data.vocab_size=320", "model.num_tokens=320", "model.max_len=192", "train.seq_len=192",
            f"model.attention={attention}"]
    exp = sft.sft_config(process, str(task), overrides=tiny)
    result = train(exp, tmp_path / "run", verbose=False)
    assert 0 < result["val_loss"] < 50
    reply = chat(tool_eval.writer_for(tmp_path / "run")[0], [{"role": "user", "content": "What is 2 plus 3?"}],
                 registry())
    assert reply.status in STATUSES and reply.nfe >= 1


def test_draft_acceptance_passes_per_token_at_its_two_deterministic_limits():
    """Every draft accepted: one pass per block of 4. None accepted past position 0: per
    block, the exact position 0 (1 pass), then three rejections each followed by a re-draft
    (5 passes, the last of which commits the next block's position 0), 6 passes / 4 tokens.
    Between them, acceptance 1/2 against the exact value of its Markov chain."""
    ones, zeros = [[1.0] * 4] * 4, [[1.0, 0.0, 0.0, 0.0]] * 4
    assert redraft_passes_per_token(ones, num_tokens=4000) == pytest.approx(0.25, abs=1e-3)
    assert redraft_passes_per_token(zeros, num_tokens=4000) == pytest.approx(1.5, abs=1e-3)
    assert tokens_per_pass([1.0, 0.5, 0.5, 0.5]) == pytest.approx(1.875)
    # Acceptance 1/2 past position 0: the Markov chain over a fresh pass's start (0..3, a
    # rejection at k costs the residual token and one re-draft pass) has passes / tokens = 7/8
    # exactly; 200k simulated tokens land within ~0.002 of it.
    half = [[1.0, 0.5, 0.5, 0.5]] * 4
    assert redraft_passes_per_token(half) == pytest.approx(7 / 8, abs=0.006)
