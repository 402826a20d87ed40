"""Every shipped experiment config parses, validates, and trains one step at test size."""

import pytest

from dllm_jax.data.corpus import embedded_corpus
from dllm_jax.data.tfds_builder import build_local_tfds
from dllm_jax.training.loop import train, with_overrides
from experiments import configs
from experiments.cli import apply_overrides, experiment_from_args, experiment_parser


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
