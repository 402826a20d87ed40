"""The host loop: bitwise resume, metrics files, and refusing bad run directories."""

import json
import shutil

import pytest

from dllm_jax.config import ExperimentConfig, ModelConfig
from dllm_jax.data.corpus import embedded_corpus
from dllm_jax.data.tokenizer import Tokenizer
from dllm_jax.diffusion import make_objective
from dllm_jax.evaluation import evaluate_likelihood
from dllm_jax.sharding import make_mesh
from dllm_jax.training.loop import eval_batches, load_run, train, with_overrides
from experiments import configs


def tiny(process="masked", steps=6):
    exp = configs.shrink(configs.quickstart(process))
    return with_overrides(exp, train={"steps": steps},
                          loop={"log_every": 1, "eval_every": 3, "checkpoint_every": 3})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An interrupted-then-resumed run and an uninterrupted one, same config."""
    root = tmp_path_factory.mktemp("runs")
    exp = tiny()
    first = train(exp, root / "resumed", stop_at=3, verbose=False)
    second = train(exp, root / "resumed", verbose=False)
    whole = train(exp, root / "whole", verbose=False)
    return exp, root, first, second, whole


def test_resume_is_bitwise_identical(runs):
    _, _, first, second, whole = runs
    assert second["start_step"] == 3
    assert first["losses"] + second["losses"] == whole["losses"]  # exact float equality
    assert len(whole["losses"]) == 6
    assert second["val_loss"] == whole["val_loss"]
    assert second["samples"] == whole["samples"]


def test_metrics_jsonl_and_tensorboard_agree(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, root, *_ , whole = runs
    records = [json.loads(line) for line in (root / "whole" / "metrics.jsonl").read_text().splitlines()]
    logged = [r["loss"] for r in records if "loss" in r]
    assert logged == pytest.approx(whole["losses"], rel=0, abs=0)
    assert any("val_loss" in r and "samples" in r for r in records)
    acc = EventAccumulator(str(root / "whole"))
    acc.Reload()
    tb = [e.value for e in acc.Scalars("loss")]
    assert tb == pytest.approx(whole["losses"], rel=1e-6)  # float32 in the event proto
    assert [e.step for e in acc.Scalars("loss")] == list(range(1, 7))
    assert [e.value for e in acc.Scalars("val_loss")] == pytest.approx(
        [r["val_loss"] for r in records if "val_loss" in r], rel=1e-6)
    texts = acc.Tags()["tensors"]  # the samples, in TensorBoard's text plugin
    assert any(tag.startswith("samples/K=") for tag in texts)


def test_context_use_is_logged_at_every_eval(runs):
    _, root, *_ , whole = runs
    records = [json.loads(line) for line in (root / "whole" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [3, 6]
    for r in evals:
        assert {f"nll_t{t:.2f}" for t in (0.02, 0.1, 0.5, 0.99)} <= set(r)
        assert r["unigram_entropy"] > 0
    assert whole["nll_t0.10"] == whole["context_use"].at(0.1)


def test_reported_bound_does_not_depend_on_the_training_recipe(tmp_path):
    """The loop evaluates the true bound: a run trained with flat weighting on clipped,
    logit-normal times with AR rows reports exactly what the plain objective gives for its
    parameters."""
    exp = with_overrides(tiny(steps=2), noise={"weighting": "flat", "t_low": 0.2, "time_distribution": "logit_normal",
                                               "ar_fraction": 0.3}, loop={"eval_every": 2})
    result = train(exp, tmp_path / "recipe", verbose=False)
    loaded, graphdef, params, tok, objective, _ = load_run(tmp_path / "recipe")
    assert objective == make_objective(configs.shrink(configs.quickstart()).noise, exp.model.num_tokens)
    mesh = make_mesh(loaded.mesh)
    bound = evaluate_likelihood(objective, graphdef, params, eval_batches(loaded, tok, mesh), mesh,
                                time_points=exp.loop.eval_time_points, seed=exp.train.seed)
    assert result["val_loss"] == pytest.approx(bound.nats_per_token, rel=1e-6)
    assert result["losses"][-1] != pytest.approx(result["val_loss"], rel=1e-3)  # trained on another loss


def test_load_run_restores_final_params(runs):
    exp, root, *_ = runs
    loaded_exp, _, _, tok, _, step = load_run(root / "whole")
    assert loaded_exp == exp and step == 6 and tok.num_tokens == exp.model.num_tokens


def test_incompatible_config_is_refused_and_nothing_overwritten(runs):
    exp, root, *_ = runs
    run_dir = root / "whole"
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    other = with_overrides(exp, model={"d_model": 64})
    with pytest.raises(ValueError, match=r"model.d_model: checkpoint has 32, config has 64"):
        train(other, run_dir, verbose=False)
    after = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    assert before == after


def test_tokenizer_mismatch_is_refused(runs, tmp_path):
    exp, root, *_ = runs
    run_dir = tmp_path / "swapped"
    shutil.copytree(root / "whole", run_dir)
    texts = embedded_corpus("train").texts[:2000]
    Tokenizer.train(texts, exp.model.num_tokens, run_dir / "tokenizer.model", model_type="bpe", seed=1,
                    character_coverage=0.99)
    with pytest.raises(ValueError, match="tokenizer does not match"):
        train(exp, run_dir, verbose=False)


def test_tokenizer_vocab_must_match_model(tmp_path):
    texts = embedded_corpus("train").texts[:500]
    path = tmp_path / "small.model"
    Tokenizer.train(texts, 400, path)
    exp = with_overrides(tiny(), data={"tokenizer": str(path)})
    with pytest.raises(ValueError, match="tokenizer has 400 pieces but ModelConfig.num_tokens=2048"):
        train(exp, tmp_path / "run", verbose=False)


def test_missing_and_empty_corpus(tmp_path):
    missing = with_overrides(tiny(), data={"source": f"local:{tmp_path / 'nope'}"})
    with pytest.raises((ValueError, FileNotFoundError), match="nope"):
        train(missing, tmp_path / "run1", verbose=False)
    (tmp_path / "empty").mkdir()
    empty = with_overrides(tiny(), data={"source": f"local:{tmp_path / 'empty'}"})
    with pytest.raises(ValueError, match="empty|no "):
        train(empty, tmp_path / "run2", verbose=False)


def test_sequence_longer_than_model_is_refused():
    exp = tiny()
    with pytest.raises(ValueError, match="sequence length 64 exceeds the model's max_len=32"):
        with_overrides(exp, train={"seq_len": 64})
    with pytest.raises(ValueError, match="causal"):
        ExperimentConfig("x", ModelConfig(num_tokens=2048), noise=exp.noise.__class__(process="ar"),
                         data=exp.data)


# --- run-directory reliability ---------------------------------------------------------------


def _snapshot(run_dir):
    return {p.relative_to(run_dir): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.mark.filterwarnings("ignore::dllm_jax.checkpoint.IncompleteCheckpointWarning")
def test_resume_over_a_damaged_latest_checkpoint_finishes(runs, tmp_path):
    """The latest step is damaged: the run falls back, trains again to that step and replaces
    it (the damaged one is set aside, not deleted), reproducing the uninterrupted losses."""
    from dllm_jax.checkpoint import COMMIT_MARKER

    exp, root, *_, whole = runs
    run_dir = tmp_path / "damaged"
    shutil.copytree(root / "whole", run_dir)
    (run_dir / "checkpoints" / "6" / COMMIT_MARKER).unlink()
    again = train(exp, run_dir, verbose=False)
    assert again["start_step"] == 3 and again["losses"] == whole["losses"][3:]
    assert (run_dir / "checkpoints" / "6.damaged").is_dir()
    assert load_run(run_dir)[-1] == 6
    assert train(exp, run_dir, verbose=False)["start_step"] == 6  # and the next start is clean


def test_checkpoints_without_config_json_are_checked_against_the_checkpoint(runs, tmp_path):
    exp, root, *_ = runs
    run_dir = tmp_path / "no_config"
    shutil.copytree(root / "whole", run_dir)
    (run_dir / "config.json").unlink()
    before = _snapshot(run_dir)
    with pytest.raises(ValueError, match=r"model.d_model: checkpoint has 32, config has 64"):
        train(with_overrides(exp, model={"d_model": 64}), run_dir, verbose=False)
    assert _snapshot(run_dir) == before  # nothing written, config.json not invented
    assert train(exp, run_dir, verbose=False)["start_step"] == 6  # the original command still works
    assert json.loads((run_dir / "config.json").read_text()) == json.loads(json.dumps(exp.to_dict()))


def test_diverging_run_stops_with_a_clear_error_and_saves_nothing_non_finite(tmp_path):
    exp = with_overrides(tiny(steps=6), train={"lr": 1e30, "warmup_steps": 0, "grad_clip": 0.0},
                         loop={"log_every": 1, "eval_every": 100, "checkpoint_every": 1})
    with pytest.raises(FloatingPointError, match=r"training diverged: .* step \d+"):
        train(exp, tmp_path / "nan", verbose=False)
    ckpt_dir = tmp_path / "nan" / "checkpoints"
    steps = sorted(int(p.name) for p in ckpt_dir.iterdir()) if ckpt_dir.exists() else []
    assert len(steps) < 6
    if steps:  # whatever was saved before the divergence is finite
        from dllm_jax.training.loop import _all_finite

        params = load_run(tmp_path / "nan")[2]
        assert bool(_all_finite(params))


def test_resume_with_a_changed_optimiser_field_says_so(runs, tmp_path, capsys):
    """config.json is rewritten (atomically) only when it changes, and the change is named."""
    exp, root, *_ = runs
    run_dir = tmp_path / "lr"
    shutil.copytree(root / "whole", run_dir)
    mtime = (run_dir / "config.json").stat().st_mtime_ns
    train(exp, run_dir, verbose=False)
    assert (run_dir / "config.json").stat().st_mtime_ns == mtime  # unchanged: not rewritten
    changed = with_overrides(exp, train={"lr": 1e-4, "steps": 7})
    train(changed, run_dir, verbose=False)
    out = capsys.readouterr().out
    assert "train.lr: 0.003 -> 0.0001" in out and "train.steps: 6 -> 7" in out
    assert json.loads((run_dir / "config.json").read_text())["train"]["lr"] == 1e-4
    assert not list(run_dir.glob(".config.json.*"))  # no temporary file left behind


def test_bad_config_json_is_named(runs, tmp_path):
    _, root, *_ = runs
    run_dir = tmp_path / "bad_json"
    shutil.copytree(root / "whole", run_dir)
    text = (run_dir / "config.json").read_text()
    (run_dir / "config.json").write_text(text[:-5])
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        load_run(run_dir)
    d = json.loads(text)
    d["model"]["colour"] = "red"
    (run_dir / "config.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"config.json: unknown field\(s\) model.colour"):
        load_run(run_dir)
