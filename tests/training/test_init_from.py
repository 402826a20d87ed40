"""``TrainConfig.init_from``: a diffusion run started from an AR run's parameters.

A block diffusion model initialised from an AR run holds exactly the AR parameters before
its first step (the same backbone: attention kind, block size and shift change no
parameter), trains from there, and a resume ignores ``init_from``. A source with other
shapes, another tokenizer or no run at all is refused with a clear error before anything is
written.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from dllm_jax.config import TrainConfig
from dllm_jax.sharding import make_mesh
from dllm_jax.training.loop import load_run, train, with_overrides
from dllm_jax.training.run_dir import init_params
from dllm_jax.training.state import create_train_state
from experiments import block_study, configs


def tiny_ar():
    exp = configs.shrink(configs.quickstart("ar"))
    return with_overrides(exp, train={"steps": 2}, loop={"eval_every": 2, "checkpoint_every": 2})


def tiny_block(init_from: str, **model):
    exp = configs.shrink(block_study.block(4))
    exp = with_overrides(exp, train={"steps": 2, "init_from": init_from}, loop={"eval_every": 2, "checkpoint_every": 2})
    return with_overrides(exp, model=model) if model else exp


@pytest.fixture(scope="module")
def ar_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("init_from")
    train(tiny_ar(), root / "ar", verbose=False)
    return root


def test_the_adapted_model_starts_from_the_ar_parameters(ar_run):
    exp = tiny_block(str(ar_run / "ar"))
    _, _, ar_params, tok, _, _ = load_run(ar_run / "ar")
    graphdef, state, _ = create_train_state(exp.model, exp.train, make_mesh(exp.mesh))
    state = init_params(ar_run / "ar", state, tok)  # (what train does, after check_init_source)
    for a, b in zip(jax.tree.leaves(ar_params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    result = train(exp, ar_run / "adapted", verbose=False)
    assert result["start_step"] == 0 and np.isfinite(result["val_loss"])
    # the new run took the source's tokenizer (the pieces its weights were trained on)
    assert (ar_run / "adapted" / "tokenizer.model").read_bytes() == (ar_run / "ar" / "tokenizer.model").read_bytes()
    # a resume reads its own checkpoint: init_from is not applied again
    again = train(with_overrides(exp, train={"steps": 3}), ar_run / "adapted", verbose=False)
    assert again["start_step"] == 2


def test_a_source_of_other_shapes_is_refused_naming_them(ar_run):
    exp = tiny_block(str(ar_run / "ar"), d_model=48, num_heads=2)
    with pytest.raises(ValueError, match="other shapes") as e:
        train(exp, ar_run / "wide", verbose=False)
    assert "['embed']['table'].value: source (2051, 32), this model (2051, 48)" in str(e.value)
    assert not (ar_run / "wide").exists()  # refused before anything was written


def test_a_missing_source_is_refused(ar_run):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        train(tiny_block(str(ar_run / "nothing_here")), ar_run / "orphan", verbose=False)
    assert not (ar_run / "orphan").exists()


def test_init_from_must_be_a_string():
    with pytest.raises((TypeError, ValueError), match="init_from"):
        TrainConfig(init_from=3)
    assert dataclasses.replace(TrainConfig(), init_from="runs/ar").init_from == "runs/ar"
