"""Bad input through the CLIs and the API: each a clear error naming the value and what was
expected, and nothing in the run directory changed (the data-loss cases of the run directory
itself are in tests/training/test_loop.py)."""

import numpy as np
import pytest

from dllm_jax.sampling import generate, make_rule
from dllm_jax.training.loop import load_run, train, with_overrides
from experiments import configs, evaluate, sample
from experiments.cli import apply_overrides


def _snapshot(run_dir):
    return {p.relative_to(run_dir): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    exp = with_overrides(configs.shrink(configs.quickstart()), train={"steps": 1})
    path = tmp_path_factory.mktemp("bad") / "run"
    train(exp, path, verbose=False)
    return path


@pytest.mark.parametrize("override,message", [
    ("train.lr=abc", r"TrainConfig.lr must be a number, got 'abc'"),
    ("train.lr=1e999", r"TrainConfig.lr must be finite, got inf"),
    ("loop.sample_steps=8", r"LoopConfig.sample_steps must be a tuple of integers, e.g. \(8, 32\), got 8"),
    ("train.seed=4294967296", r"TrainConfig.seed must be in \[0, 2\*\*32\) .* got 4294967296"),
    ("data.seed=-1", r"DataConfig.seed must be in \[0, 2\*\*32\)"),
    ("model.shift=1", r"ModelConfig.shift must be True or False, got 1"),
    ("mesh.data='two'", r"MeshConfig.data must be an integer, got 'two'"),
    ("train.batch_size=[4]", r"TrainConfig.batch_size must be an integer, got \(4,\)"),
    ("noise.process='absorbing'", r"NoiseConfig.process must be one of \('masked', 'uniform', 'hybrid', 'ar'\), got 'absorbing'"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(configs.quickstart(), [override])


@pytest.mark.parametrize("argv,message", [
    (["--length", "0"], r"--length must be in \[1, 32\] \(the model's max_len\), got 0"),
    (["--length", "1000"], r"--length must be in \[1, 32\] \(the model's max_len\), got 1000"),
    (["--steps", "1000000000"], r"--steps \[1000000000\] exceed --max_steps=100000"),
])
def test_sample_cli_refuses_silent_changes(run_dir, argv, message, capsys):
    before = _snapshot(run_dir)
    with pytest.raises(SystemExit) as info:
        sample.main([str(run_dir), *argv])
    assert info.value.code == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    assert _snapshot(run_dir) == before


def test_evaluate_cli_refuses_zero_batches(run_dir, capsys):
    with pytest.raises(SystemExit):
        evaluate.main([str(run_dir), "--batches", "0", "--context_times"])
    assert "--batches must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("guidance", [float("nan"), float("inf"), -1.0, "1"])
def test_generate_refuses_non_finite_guidance(run_dir, guidance):
    exp, graphdef, params, _, objective, _ = load_run(run_dir)
    rule = make_rule("ancestral", objective)
    with pytest.raises(ValueError, match=r"guidance must be a finite number >= 0, got"):
        generate(graphdef, params, [[5, 6]], length=4, rule=rule, num_steps=2, guidance=guidance)


def test_generate_takes_numpy_integers_and_refuses_wrapping_seeds(run_dir):
    exp, graphdef, params, _, objective, _ = load_run(run_dir)
    rule = make_rule("ancestral", objective)
    a = generate(graphdef, params, [[5, 6]], length=4, rule=rule, num_steps=np.int64(4), seed=np.uint32(3))
    b = generate(graphdef, params, [[5, 6]], length=4, rule=rule, num_steps=4, seed=3)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    for seed in (2**32, -1):
        with pytest.raises(ValueError, match=rf"seed must be an integer in \[0, 2\*\*32\) .* got {seed}"):
            generate(graphdef, params, [[5, 6]], length=4, rule=rule, num_steps=4, seed=seed)


def test_sample_and_evaluate_print_progress(run_dir, capsys):
    sample.main([str(run_dir), "--steps", "2", "--num_samples", "1", "--length", "4"])
    out = capsys.readouterr().out
    assert "--- K = 2: sampling 1 x 4 tokens ..." in out and "done in" in out
    evaluate.main([str(run_dir), "--batches", "1", "--time_points", "2", "--context_times", "0.5"])
    out = capsys.readouterr().out
    assert "likelihood batches: 1/1" in out and "context-use noise levels: 1/1" in out
