"""The recipe study's configs and table (the study itself is a script with committed results)."""

import math

import pytest

from dllm_jax.config import NoiseConfig
from experiments import configs
from experiments.learning_report import table
from experiments.learning_study import BASE_STEPS, BY_NAME, VARIANTS, experiment

TOKENS_1X = BASE_STEPS * 32 * 128


@pytest.mark.parametrize("budget", [1, 4])
def test_every_variant_builds_a_valid_config_with_equal_tokens(budget):
    for v in VARIANTS:
        exp = experiment(v, budget)  # overrides parse and validate
        assert exp.train.steps * exp.train.batch_size * exp.train.seq_len == TOKENS_1X * budget, v.name
        assert exp.loop.eval_batches * exp.train.batch_size == 128, v.name  # the same eval rows
        assert exp.noise.process == v.process


def test_baseline_is_the_original_recipe_not_the_current_quickstart():
    """The quickstart adopted the winners; the study's reference must not move with it."""
    base = experiment(BY_NAME["base"], 1)
    assert configs.quickstart().model.shift and not base.model.shift
    assert base.noise == NoiseConfig(process="masked")
    assert base.model.attention_bias == "none"
    assert (base.train.batch_size, base.train.steps, base.train.lr, base.train.warmup_steps,
            base.train.weight_decay) == (32, 300, 2e-3, 30, 0.01)
    ar = experiment(BY_NAME["ar"], 1)
    assert (ar.train.lr, ar.train.weight_decay, ar.model.attention) == (2e-3, 0.01, "causal")
    # Warmup scales with the step count, so it covers the same tokens.
    assert experiment(BY_NAME["best5"], 1).train.warmup_steps == 30 * 8


def _record(variant, process, loss, **extra):
    return {"variant": variant, "factor": "f", "process": process, "budget": 1, "steps": 300, "batch_size": 32,
            "val_loss": loss, "val_ppl": math.exp(loss), "nll_t0.10": loss, "unigram_entropy": 6.0,
            "wall_seconds": 1.0, **extra}


def test_table_ratio_is_to_the_best_ar_and_rows_keep_their_columns():
    rows = [_record("ar_a", "ar", 4.0), _record("ar_b", "ar", 3.5), _record("d", "masked", 4.5, network_as_ar=5.0),
            _record("e", "masked", 5.0)]
    lines = table(rows).splitlines()
    by_name = {line.split("|")[1].strip(): line.split("|")[1:-1] for line in lines[2:]}
    assert {len(cells) for cells in by_name.values()} == {len(lines[0].split("|")) - 2}
    assert float(by_name["d"][6]) == pytest.approx(math.exp(1.0), abs=0.005)  # vs ar_b, not ar_a
    assert float(by_name["e"][6]) == pytest.approx(math.exp(1.5), abs=0.005)
    assert by_name["d"][9].strip() == "5.000" and by_name["e"][9].strip() == ""
