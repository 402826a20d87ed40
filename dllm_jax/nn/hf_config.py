"""Hugging Face ``config.json`` <-> our ``ModelConfig`` for Llama / Qwen2 (``convert.py`` moves
the weights).

Supported: ``model_type`` ``llama`` and ``qwen2`` with a SiLU SwiGLU MLP, RMSNorm, RoPE of
rope type ``default``, ``linear`` or ``llama3``, grouped-query attention, qkv bias, tied or
untied embeddings. Anything else is refused with the field named.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from dllm_jax.config import ModelConfig
from dllm_jax.files import read_json

MODEL_TYPES = ("llama", "qwen2")
ROPE_TYPES = ("default", "linear", "llama3")
OURS_FILE = "dllm_jax.json"
EXTRA_FILE = "dllm_jax_extra.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def is_hf_folder(path: str | os.PathLike) -> bool:
    """A folder with a ``config.json`` naming a ``model_type`` and safetensors weights."""
    path = Path(path)
    return (path / "config.json").is_file() and ((path / SINGLE_FILE).is_file() or (path / INDEX_FILE).is_file())


def _rope(hf: dict, where: str) -> dict:
    """ModelConfig rope fields from a config's ``rope_parameters`` (transformers >= 5) or
    ``rope_theta`` + ``rope_scaling`` (earlier files)."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or {}
    if not isinstance(scaling, dict) or not isinstance(params, dict):
        raise ValueError(f"{where}: rope_scaling / rope_parameters must be objects, got {scaling!r}, {params!r}")
    merged = {**scaling, **params}
    theta = merged.get("rope_theta", hf.get("rope_theta", 10_000.0))
    kind = merged.get("rope_type", merged.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ValueError(f"{where}: rope type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)}); "
                         "YaRN, dynamic NTK and LongRoPE scaling are not implemented")
    out = {"rope_theta": float(theta)}
    if kind == "linear":
        out.update(rope_scaling="linear", rope_factor=float(merged["factor"]))
    elif kind == "llama3":
        out.update(rope_scaling="llama3", rope_factor=float(merged["factor"]),
                   rope_low_freq_factor=float(merged["low_freq_factor"]),
                   rope_high_freq_factor=float(merged["high_freq_factor"]),
                   rope_original_max_len=int(merged["original_max_position_embeddings"]))
    return out


def hf_model_config(hf: dict, where: str = "config.json", **overrides) -> ModelConfig:
    """Our ``ModelConfig`` for a Hugging Face config dict (a causal model); ``overrides``
    replace fields (e.g. ``max_len``, ``attention``, ``dtype``).

    Raises ``ValueError`` naming ``where`` and the field for anything not supported.
    """
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{where}: model_type {model_type!r} is not supported (supported: {', '.join(MODEL_TYPES)})")
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in required if not isinstance(hf.get(k), int)]
    if missing:
        raise ValueError(f"{where}: missing or non-integer fields {missing}")
    refusals = {
        "hidden_act": (hf.get("hidden_act", "silu") != "silu", "only silu (SwiGLU) MLPs"),
        "attention_bias": (model_type == "llama" and hf.get("attention_bias", False), "no biases on Llama's projections"),
        "mlp_bias": (hf.get("mlp_bias", False), "no MLP biases"),
        "use_sliding_window": (hf.get("use_sliding_window", False), "full attention only"),
    }
    for field, (bad, what) in refusals.items():
        if bad:
            raise ValueError(f"{where}: {field}={hf.get(field)!r} is not supported ({what})")
    heads, d = hf["num_attention_heads"], hf["hidden_size"]
    head_dim = hf.get("head_dim") or d // heads
    if head_dim * heads != d:
        raise ValueError(f"{where}: head_dim={head_dim} with num_attention_heads={heads} does not equal "
                         f"hidden_size={d} (a separate head width is not supported)")
    fields = dict(
        num_tokens=hf["vocab_size"], max_len=int(hf.get("max_position_embeddings", 2048)), d_model=d,
        num_layers=hf["num_hidden_layers"], num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
        mlp_dim=hf["intermediate_size"], attention="causal", qkv_bias=model_type == "qwen2",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), start_id=_start_id(hf), **_rope(hf, where),
    )
    fields.update(overrides)
    try:
        return ModelConfig(**fields)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _start_id(hf: dict) -> int | None:
    """The model's own start token: ``bos_token_id``, else its (first) ``eos_token_id``."""
    for key in ("bos_token_id", "eos_token_id"):
        value = hf.get(key)
        value = value[0] if isinstance(value, list) and value else value
        if isinstance(value, int) and 0 <= value < hf["vocab_size"]:
            return value
    return None


def hf_config_dict(config: ModelConfig) -> dict:
    """The ``config.json`` of ``config`` as a Llama (or, with qkv bias, Qwen2) model."""
    unsupported = {"time_conditioning": config.time_conditioning, "attention_bias": config.attention_bias != "none"}
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ValueError(f"cannot export a model with {', '.join(bad)}: Llama/Qwen2 have no such parameters")
    qwen = config.qkv_bias
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling == "linear":
        rope.update(rope_type="linear", factor=config.rope_factor)
    elif config.rope_scaling == "llama3":
        rope.update(rope_type="llama3", factor=config.rope_factor, low_freq_factor=config.rope_low_freq_factor,
                    high_freq_factor=config.rope_high_freq_factor,
                    original_max_position_embeddings=config.rope_original_max_len)
    out = {
        "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
        "model_type": "qwen2" if qwen else "llama",
        "vocab_size": config.num_tokens, "hidden_size": config.d_model,
        "intermediate_size": config.hidden_dim, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim, "hidden_act": "silu", "max_position_embeddings": config.max_len,
        "rms_norm_eps": config.norm_eps, "tie_word_embeddings": config.tie_embeddings,
        "rope_parameters": rope, "rope_theta": config.rope_theta, "dtype": "float32",
        "attention_bias": False, "mlp_bias": False,
        "bos_token_id": config.start_id if config.start_id is not None and config.start_id < config.num_tokens else None,
    }
    if rope["rope_type"] != "default":
        out["rope_scaling"] = dict(rope)
    if qwen:
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=config.num_layers)
        del out["attention_bias"], out["mlp_bias"]
    return out


def read_config(folder: str | os.PathLike, **overrides) -> ModelConfig:
    """The ``ModelConfig`` of an HF folder (our own ``dllm_jax.json`` when the folder was
    written by ``export_hf``), with ``overrides``."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a Hugging Face model folder (no config.json)")
    hf = read_json(folder / "config.json")
    config = hf_model_config(hf, str(folder / "config.json"))
    ours = folder / OURS_FILE
    if ours.is_file():
        saved = read_json(ours)
        try:
            config = ModelConfig(**saved)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{ours}: {e}") from None
    if overrides:
        try:
            config = dataclasses.replace(config, **overrides)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{folder}: overriding {sorted(overrides)}: {e}") from None
    return config
