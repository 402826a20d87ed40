"""Bad configs and bad boundary inputs raise ValueError naming the bad value."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax.config import (
    LoopConfig,
    MeshConfig,
    ModelConfig,
    NoiseConfig,
    TrainConfig,
    check_sequence_length,
    check_tokens,
    special_ids,
)
from dllm_jax.diffusion import make_schedule
from dllm_jax.nn import attention_mask
from dllm_jax.sharding import make_mesh


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_len", 0),
        ("d_model", -32),
        ("num_layers", 0),
        ("num_heads", 0),
        ("block_size", 0),
        ("time_embed_dim", -1),
        ("vocab_multiple", 0),
        ("mlp_dim", 0),
        ("num_kv_heads", 0),
        ("rope_original_max_len", 0),
        ("num_layers", 2.0),  # not an integer
        ("num_layers", True),  # bool is not a size
    ],
)
def test_model_config_sizes_must_be_positive_integers(field, value):
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field} .*got {re.escape(repr(value))}"):
        ModelConfig(num_tokens=11, **{field: value})


@pytest.mark.parametrize("value", [0, -5])
def test_model_config_num_tokens_must_be_positive(value):
    with pytest.raises(ValueError, match=rf"ModelConfig\.num_tokens .*got {value}"):
        ModelConfig(num_tokens=value)


def test_model_config_needs_two_ordinary_tokens():
    with pytest.raises(ValueError, match=r"num_tokens must be >= 2 .*got 1"):
        ModelConfig(num_tokens=1)
    ModelConfig(num_tokens=2)  # the smallest valid vocabulary


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match=r"num_heads=5 must divide d_model=32"):
        ModelConfig(num_tokens=11, d_model=32, num_heads=5)


@pytest.mark.parametrize(("changes", "message"), [
    ({"num_kv_heads": 3}, r"num_kv_heads=3 must divide num_heads=4"),
    ({"norm_eps": 0.0}, r"norm_eps must be > 0, got 0.0"),
    ({"rope_scaling": "yarn"}, r"rope_scaling must be one of .*got 'yarn'"),
    ({"rope_factor": 0.5}, r"rope_factor must be >= 1, got 0.5"),
    ({"rope_low_freq_factor": 4.0, "rope_high_freq_factor": 1.0}, r"0 < rope_low_freq_factor < rope_high_freq_factor"),
    ({"start_id": 14}, r"start_id=14 must be a token id in \[0, 14\)"),
    ({"qkv_bias": 1}, r"qkv_bias must be True or False"),
])
def test_checkpoint_family_fields_are_checked(changes, message):
    """The fields Llama / Qwen2 need (GQA, norm epsilon, rope scaling, start token)."""
    with pytest.raises(ValueError, match=message):
        ModelConfig(num_tokens=11, d_model=32, num_heads=4, **changes)
    config = ModelConfig(num_tokens=11, d_model=32, num_heads=4, num_kv_heads=2, start_id=13)
    assert (config.kv_heads, config.bos_input, ModelConfig(num_tokens=11).bos_input) == (2, 13, 12)


def test_head_dim_must_be_even():
    with pytest.raises(ValueError, match=r"head dim d_model/num_heads=3 must be even"):
        ModelConfig(num_tokens=11, d_model=12, num_heads=4)


def test_unknown_attention_kind():
    with pytest.raises(ValueError, match=r"attention must be one of .*got 'sliding'"):
        ModelConfig(num_tokens=11, attention="sliding")
    with pytest.raises(ValueError, match=r"unknown attention kind 'sliding'"):
        attention_mask("sliding", 4)


def test_unknown_dtype():
    with pytest.raises(ValueError, match=r"dtype must be one of .*got 'float16'"):
        ModelConfig(num_tokens=11, dtype="float16")


def test_rope_theta_must_be_positive():
    with pytest.raises(ValueError, match=r"rope_theta must be > 0, got -1"):
        ModelConfig(num_tokens=11, rope_theta=-1.0)


def test_unknown_schedule_and_process():
    with pytest.raises(ValueError, match=r"schedule must be one of .*got 'linear'"):
        NoiseConfig(schedule="linear")
    with pytest.raises(ValueError, match=r"process must be one of .*got 'gaussian'"):
        NoiseConfig(process="gaussian")
    with pytest.raises(ValueError, match=r"unknown schedule 'foo'"):
        make_schedule("foo")


def test_hybrid_noise_fields():
    assert NoiseConfig(process="hybrid", p_uniform=0.2, uniform_share="decaying").p_uniform == 0.2
    with pytest.raises(ValueError, match=r"NoiseConfig\.p_uniform must be in \[0, 1\], got 1.5"):
        NoiseConfig(process="hybrid", p_uniform=1.5)
    with pytest.raises(ValueError, match=r"NoiseConfig\.p_uniform must be in \[0, 1\], got -0.1"):
        NoiseConfig(process="hybrid", p_uniform=-0.1)
    with pytest.raises(ValueError, match=r"p_uniform=0.5 is the hybrid process's knob; set process='hybrid'"):
        NoiseConfig(process="masked", p_uniform=0.5)
    with pytest.raises(ValueError, match=r"uniform_share must be one of .*got 'rising'"):
        NoiseConfig(process="hybrid", uniform_share="rising")


@pytest.mark.parametrize(("field", "value"), [("exponent", 0.0), ("t_min", -0.1), ("t_min", 0.5)])
def test_noise_config_ranges(field, value):
    with pytest.raises(ValueError, match=rf"NoiseConfig\.{field} .*got {value}"):
        NoiseConfig(**{field: value})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"time_distribution": "beta"}, r"time_distribution must be one of .*got 'beta'"),
        ({"weighting": "mdlm"}, r"weighting must be one of \('elbo', 'flat'\), got 'mdlm'"),
        ({"t_low": 0.5, "t_high": 0.5}, r"0 <= t_low < t_high <= 1, got t_low=0.5, t_high=0.5"),
        ({"t_low": -0.1}, r"t_low=-0.1"),
        ({"t_high": 1.5}, r"t_high=1.5"),
        ({"t_high": 0.0005}, r"training range \[t_low=0.0, t_high=0.0005\] does not overlap"),
        ({"process": "uniform", "t_min": 0.1, "t_low": 0.95}, r"does not overlap .*\[t_min=0.1, 0.9\]"),
        ({"logit_std": 0.0}, r"logit_std must be > 0, got 0.0"),
        ({"ar_fraction": 1.0}, r"ar_fraction must be in \[0, 1\), got 1.0"),
        ({"ar_fraction": 1.5, "ar_fraction_end": 0.0}, r"ar_fraction must be in \[0, 1\], got 1.5"),
        ({"ar_fraction": 1.0, "ar_fraction_end": 1.0}, r"ar_fraction_end must be in \[0, 1\) .*got 1.0"),
        ({"ar_fraction": -0.5}, r"ar_fraction must be in \[0, 1\), got -0.5"),
        ({"t_low": "0.1"}, r"NoiseConfig.t_low must be a number, got '0.1'"),
        ({"logit_mean": float("inf")}, r"logit_mean must be finite, got inf"),
        ({"process": "ar", "weighting": "flat"}, r"process='ar' has no noise .*weighting='flat'"),
        ({"process": "ar", "ar_fraction": 0.5}, r"process='ar' .*ar_fraction=0.5"),
    ],
)
def test_noise_config_training_recipe_fields(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NoiseConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"embed_init_std": 0.0}, r"embed_init_std must be > 0, got 0.0"),
        ({"head_init_scale": -1.0}, r"head_init_scale must be >= 0, got -1.0"),
        ({"head_init_scale": float("nan")}, r"head_init_scale must be finite, got nan"),
        ({"shift": True, "attention": "causal"}, r"shift .* diffusion models \(bidirectional or block_causal\), got attention='causal'"),
    ],
)
def test_model_config_recipe_fields(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(num_tokens=11, **kwargs)


@pytest.mark.parametrize("value", [(0.0,), (0.5, 1.5), [0.1], ("a",)])
def test_loop_config_context_times(value):
    with pytest.raises(ValueError, match=r"LoopConfig.context_times must be a tuple of (times in \(0, 1\]|numbers)"):
        LoopConfig(context_times=value)
    LoopConfig(context_times=())  # off


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lr", 0.0),
        ("lr", -1e-3),
        ("ema_decay", 1.0),
        ("ema_decay", -0.1),
        ("min_lr_ratio", 1.5),
        ("grad_clip", -1.0),
        ("grad_clip", float("nan")),
        ("b2", 1.0),
        ("weight_decay", -0.01),
        ("warmup_steps", -1),
        ("batch_size", 0),
        ("steps", -10),
    ],
)
def test_train_config_ranges(field, value):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field} .*got {re.escape(repr(value))}"):
        TrainConfig(**{field: value})


@pytest.mark.parametrize(
    ("sizes", "shown"),
    [
        ({"data": -1, "fsdp": -1}, "data=-1, fsdp=-1, tensor=1"),
        ({"tensor": 0}, "data=-1, fsdp=1, tensor=0"),
        ({"fsdp": -2}, "data=-1, fsdp=-2, tensor=1"),
    ],
)
def test_mesh_config_sizes(sizes, shown):
    with pytest.raises(ValueError, match=re.escape(shown)):
        MeshConfig(**sizes)


def test_make_mesh_shape_must_match_devices():
    n = jax.device_count()
    with pytest.raises(ValueError, match=rf"needs {2 * n} devices, but {n} are available"):
        make_mesh(MeshConfig(data=2 * n))
    with pytest.raises(
        ValueError, match=rf"{n} devices cannot be split into mesh sizes \[-1, {n + 1}, 1\]"
    ):
        make_mesh(MeshConfig(fsdp=n + 1))
    mesh = make_mesh(MeshConfig())  # -1 takes every device
    assert dict(mesh.shape) == {"data": n, "fsdp": 1, "tensor": 1}


def test_check_sequence_length():
    model = ModelConfig(num_tokens=11, max_len=16)
    check_sequence_length(16, model)
    with pytest.raises(ValueError, match=r"sequence length 17 exceeds the model's max_len=16"):
        check_sequence_length(17, model)


def test_special_ids_follow_ordinary_tokens():
    model = ModelConfig(num_tokens=11, vocab_multiple=8)
    assert special_ids(11) == (11, 12, 13) == model.special
    assert model.vocab_size == 16  # 11 + 3 specials, rounded up to a multiple of 8


class TestCheckTokens:
    def test_accepts_every_valid_id(self):
        check_tokens(np.arange(14).reshape(2, 7), 14)
        check_tokens(jnp.array([[0, 13]], jnp.int32), 14)
        check_tokens(np.zeros((0, 5), np.int64), 14)  # empty batch
        check_tokens(np.int32(3), 14)  # a scalar

    @pytest.mark.parametrize(
        ("tokens", "bad", "index"),
        [
            ([[0, 1, 14]], 14, "(0, 2)"),
            ([[0, 1], [2, -1]], -1, "(1, 1)"),
            ([[1, 99], [2, -7]], 99, "(0, 1)"),  # the first offender, in row-major order
        ],
    )
    def test_rejects_out_of_range_ids(self, tokens, bad, index):
        expected = rf"prompt holds id {bad} at index {re.escape(index)}; ids must be in \[0, 14\)"
        with pytest.raises(ValueError, match=expected):
            check_tokens(np.asarray(tokens), 14, name="prompt")
        with pytest.raises(ValueError, match=expected):
            check_tokens(jnp.asarray(tokens, jnp.int32), 14, name="prompt")

    def test_rejects_non_integer_arrays(self):
        with pytest.raises(TypeError, match="tokens must be an integer array, got dtype float32"):
            check_tokens(np.zeros((2, 3), np.float32), 14)

    @pytest.mark.parametrize("bound", [0, -3, 2.5])
    def test_rejects_bad_bound(self, bound):
        with pytest.raises(ValueError, match=rf"num_tokens_total .*got {bound}"):
            check_tokens(np.zeros((1, 2), np.int32), bound)
