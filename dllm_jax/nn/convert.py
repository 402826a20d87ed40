"""Hugging Face Llama / Qwen2 folders in and out: ``config.json`` + ``*.safetensors``.

``load_hf(folder, mesh)`` reads a folder as ``transformers.save_pretrained`` writes it (one
``model.safetensors``, or shards named by ``model.safetensors.index.json``) into our
``ModelConfig`` and a parameter state born in the shardings of the rules table: each
device's slice is read from the memory-mapped files by ``jax.make_array_from_callback``,
one layer's tensor at a time, so no host copy of the whole model is made. Weights are read
with the ``safetensors`` package's numpy loader (no torch) and stored in float32.

Vocabulary. The checkpoint's ``vocab_size`` rows are our ordinary tokens ``[0, num_tokens)``
(the model's own specials, e.g. ``<|endoftext|>``, included: they are predicted like any
token); our pad / bos / mask rows follow, initialised to the mean embedding (a new token
that starts as the average token, as is usual when adding tokens). The output head covers
the ordinary tokens only, so logits equal the checkpoint's.

``export_hf(folder, config, params)`` writes the same format back (``transformers`` loads it
as a ``LlamaForCausalLM`` or ``Qwen2ForCausalLM``), plus ``dllm_jax.json`` (our full config:
attention kind, block size, shift) and ``dllm_jax_extra.safetensors`` (our special rows), so a
model adapted here re-imports exactly.

The config mapping lives in ``hf_config.py``. Supported: ``model_type`` ``llama`` and ``qwen2`` (SiLU SwiGLU MLP, RMSNorm, RoPE with
rope type ``default``, ``linear`` or ``llama3``, grouped-query attention, qkv bias, tied or
untied embeddings). Anything else — another model type, YaRN / dynamic / LongRoPE scaling,
sliding-window attention, biases on the output or MLP projections, a head_dim other than
hidden_size / num_attention_heads — is refused with the field named.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from dllm_jax.config import ModelConfig
from dllm_jax.files import read_json, write_atomic
from dllm_jax.nn.hf_config import (
    EXTRA_FILE,
    INDEX_FILE,
    OURS_FILE,
    SINGLE_FILE,
    hf_config_dict,
    is_hf_folder,
    read_config,
)
from dllm_jax.nn.model import abstract_model, param_shardings

__all__ = ["HFModel", "export_hf", "is_hf_folder", "load_hf", "read_config"]



# ---------------------------------------------------------------------------------- tensors


class _Weights:
    """The folder's tensors by name, memory-mapped (``safe_open`` keeps each file open)."""

    def __init__(self, folder: Path):
        self.folder = folder
        index = folder / INDEX_FILE
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index}: no weight_map")
            files = sorted(set(weight_map.values()))
        elif (folder / SINGLE_FILE).is_file():
            files, weight_map = [SINGLE_FILE], None
        else:
            raise FileNotFoundError(f"{folder}: no {SINGLE_FILE} and no {INDEX_FILE}")
        self.handles = {}
        for name in files:
            path = folder / name
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in {INDEX_FILE} but missing")
            self.handles[name] = _open(path)
        self.where = weight_map or {k: SINGLE_FILE for k in self.handles[SINGLE_FILE].keys()}
        for key, name in self.where.items():
            if key not in self.handles[name].keys():
                raise ValueError(f"{folder / name}: has no tensor {key!r} (its index says it does)")

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.handles[self.where[key]].get_slice(key).get_shape())

    def read(self, key: str, rows: slice = slice(None)) -> np.ndarray:
        """The tensor (or a range of its rows) as float32."""
        path = self.folder / self.where[key]
        try:
            return np.asarray(self.handles[self.where[key]].get_slice(key)[rows], np.float32)
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read tensor {key!r}: {e}") from None


def _open(path: Path):
    """Open one file; safetensors checks that its header's tensors cover the file exactly,
    so a truncated file is refused here, before any tensor is read."""
    try:
        return safe_open(str(path), framework="np")
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or damaged?): {e}") from None


# Each of our parameters: (HF name, or a per-layer template with {i}; transform of one layer's
# tensor to our layout given the config).
def _layout(config: ModelConfig) -> dict[str, tuple[str, Callable[[np.ndarray], np.ndarray], Callable]]:
    d, h, g, dh = config.d_model, config.num_heads, config.kv_heads, config.head_dim

    def proj(heads):  # HF (heads*dh, d) -> ours (d, heads, dh)
        return (lambda w: w.T.reshape(d, heads, dh), lambda k: k.reshape(d, heads * dh).T)

    def bias(heads):
        return (lambda b: b.reshape(heads, dh), lambda b: b.reshape(heads * dh))

    same = (lambda w: w, lambda w: w)
    transpose = (lambda w: w.T, lambda w: w.T)
    attn = "model.layers.{i}.self_attn."
    table = {
        "blocks.attn_norm.scale": ("model.layers.{i}.input_layernorm.weight", *same),
        "blocks.mlp_norm.scale": ("model.layers.{i}.post_attention_layernorm.weight", *same),
        "blocks.attn.q.kernel": (attn + "q_proj.weight", *proj(h)),
        "blocks.attn.k.kernel": (attn + "k_proj.weight", *proj(g)),
        "blocks.attn.v.kernel": (attn + "v_proj.weight", *proj(g)),
        "blocks.attn.o.kernel": (attn + "o_proj.weight", lambda w: w.T.reshape(h, dh, d),
                                 lambda k: k.reshape(h * dh, d).T),
        "blocks.mlp.gate.kernel": ("model.layers.{i}.mlp.gate_proj.weight", *transpose),
        "blocks.mlp.up.kernel": ("model.layers.{i}.mlp.up_proj.weight", *transpose),
        "blocks.mlp.down.kernel": ("model.layers.{i}.mlp.down_proj.weight", *transpose),
        "final_norm.scale": ("model.norm.weight", *same),
        "head.kernel": ("lm_head.weight", *transpose),
    }
    if config.qkv_bias:
        for p, heads in (("q", h), ("k", g), ("v", g)):
            table[f"blocks.attn.{p}.bias"] = (attn + f"{p}_proj.bias", *bias(heads))
    return table


def _flat(state) -> dict[str, nnx.Variable]:
    return {".".join(map(str, path)): v for path, v in nnx.to_flat_state(state)}


def _check_shapes(weights: _Weights, config: ModelConfig, layout, abstract: dict) -> None:
    """Every tensor the config needs exists with the shape it implies (before anything is read)."""
    problems = []
    for name, var in abstract.items():
        if name == "embed.table":
            keys, want = ["model.embed_tokens.weight"], (config.num_tokens, config.d_model)
        else:
            template, to_ours, to_hf = layout[name]
            per_layer = name.startswith("blocks.")
            keys = [template.format(i=i) for i in range(config.num_layers)] if per_layer else [template]
            one = var.get_value().shape[1:] if per_layer else var.get_value().shape
            want = to_hf(np.empty(one, np.float32)).shape
        for key in keys:
            if key not in weights:
                problems.append(f"missing tensor {key!r}")
            elif weights.shape(key) != tuple(want):
                problems.append(f"{key!r} in {weights.where[key]} has shape {weights.shape(key)}, "
                                f"the config implies {tuple(want)}")
    if problems:
        raise ValueError(f"{weights.folder}: the weights do not match config.json:\n  " + "\n  ".join(problems[:8])
                         + (f"\n  ... ({len(problems)} problems)" if len(problems) > 8 else ""))


# ---------------------------------------------------------------------------------- load


@dataclasses.dataclass(frozen=True)
class HFModel:
    """An imported folder: our config, the graph definition and the sharded parameters (the
    tokenizer is ``dllm_jax.data.hf_tokenizer.HFTokenizer.load(folder, config.num_tokens)``)."""

    config: ModelConfig
    graphdef: object
    params: nnx.State


def load_hf(folder: str | os.PathLike, mesh: Mesh, **overrides) -> HFModel:
    """Import an HF Llama / Qwen2 folder: parameters read straight into their shardings on ``mesh``.

    ``overrides`` replace ``ModelConfig`` fields that change no parameter shape (e.g.
    ``max_len=1024`` to size the KV caches, ``attention="block_causal"`` and ``block_size``
    to adapt the model, ``dtype="bfloat16"``).
    """
    folder = Path(folder)
    config = read_config(folder, **overrides)
    weights = _Weights(folder)
    layout = _layout(config)
    graphdef, abstract_state = abstract_model(config)
    abstract = _flat(abstract_state)
    _check_shapes(weights, config, layout, abstract)
    extra = _open(folder / EXTRA_FILE) if (folder / EXTRA_FILE).is_file() else None
    shardings = _flat(param_shardings(config, mesh))
    arrays = {}
    for name, var in shardings.items():
        shape = abstract[name].get_value().shape
        if name == "embed.table":
            read = _embed_reader(weights, config, extra)
        else:
            template, to_ours, _ = layout[name]
            read = _layer_reader(weights, template, to_ours, config.num_layers) if name.startswith("blocks.") \
                else _whole_reader(weights, template, to_ours)
        arrays[name] = jax.make_array_from_callback(shape, var.get_value(), _memo(read))
    params = nnx.from_flat_state({tuple(k.split(".")): shardings[k].replace(arrays[k]) for k in shardings})
    return HFModel(config, graphdef, params)


def _memo(read):
    """Devices holding the same slice (replicated axes) share one read."""
    cache = {}

    def callback(index):
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key not in cache:
            cache[key] = read(index)
        return cache[key]

    return callback


def _layer_reader(weights, template, to_ours, num_layers):
    def read(index):
        layers = range(num_layers)[index[0]]
        return np.stack([to_ours(weights.read(template.format(i=i)))[index[1:]] for i in layers])

    return read


def _whole_reader(weights, key, to_ours):
    return lambda index: to_ours(weights.read(key))[index]


def _embed_reader(weights, config: ModelConfig, extra):
    """Rows [0, num_tokens) from the checkpoint; our specials' rows from ``dllm_jax_extra``
    (a folder we exported) or the mean embedding."""
    key, n, rows = "model.embed_tokens.weight", config.num_tokens, config.vocab_size
    specials = {}

    def special_rows():
        if "rows" not in specials:
            if extra is not None and "embed.special_rows" in extra.keys():
                specials["rows"] = np.asarray(extra.get_tensor("embed.special_rows"), np.float32)
            else:
                total = np.zeros(config.d_model, np.float64)
                for start in range(0, n, 16384):
                    total += weights.read(key, slice(start, min(n, start + 16384))).sum(0, dtype=np.float64)
                mean = (total / n).astype(np.float32)
                specials["rows"] = np.broadcast_to(mean, (rows - n, config.d_model)).copy()
            if specials["rows"].shape != (rows - n, config.d_model):
                raise ValueError(f"{EXTRA_FILE}: special rows of shape {specials['rows'].shape}, "
                                 f"expected {(rows - n, config.d_model)}")
        return specials["rows"]

    def read(index):
        lo, hi, _ = index[0].indices(rows)
        parts = []
        if lo < n:
            parts.append(weights.read(key, slice(lo, min(hi, n))))
        if hi > n:
            parts.append(special_rows()[max(lo, n) - n : hi - n])
        return np.concatenate(parts)[:, index[1]]

    return read


# ---------------------------------------------------------------------------------- export


def export_hf(folder: str | os.PathLike, config: ModelConfig, params, tokenizer=None, *,
              max_shard_bytes: int = 2 * 2**30, overwrite: bool = False) -> Path:
    """Write ``params`` as an HF folder ``transformers.AutoModelForCausalLM`` loads.

    Tensors are float32, split into shards of at most ``max_shard_bytes`` (with
    ``model.safetensors.index.json``) when larger. The folder is written whole in a
    temporary sibling and renamed into place: a failed export leaves nothing, and an
    existing folder is never replaced unless ``overwrite``.
    """
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} exists: export_hf writes a new folder (pass overwrite=True to replace it)")
    hf_config = hf_config_dict(config)
    flat = _flat(params)
    layout = _layout(config)
    tensors = {}
    for name, var in flat.items():
        value = np.asarray(jax.device_get(var.get_value()), np.float32)
        if name == "embed.table":
            tensors["model.embed_tokens.weight"] = value[: config.num_tokens]
            specials = value[config.num_tokens :]
            continue
        template, _, to_hf = layout[name]
        if name.startswith("blocks."):
            for i in range(config.num_layers):
                tensors[template.format(i=i)] = np.ascontiguousarray(to_hf(value[i]))
        else:
            tensors[template] = np.ascontiguousarray(to_hf(value))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _write_shards(tmp, tensors, max_shard_bytes)
        save_file({"embed.special_rows": np.ascontiguousarray(specials)}, str(tmp / EXTRA_FILE))
        write_atomic(tmp / "config.json", json.dumps(hf_config, indent=2))
        write_atomic(tmp / OURS_FILE, json.dumps(dataclasses.asdict(config), indent=2))
        if tokenizer is not None:  # an HFTokenizer (dllm_jax.data.hf_tokenizer)
            tokenizer.save_hf(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _write_shards(folder: Path, tensors: dict[str, np.ndarray], max_shard_bytes: int) -> None:
    shards, current, size = [], {}, 0
    for key in sorted(tensors):
        nbytes = tensors[key].nbytes
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key] = tensors[key]
        size += nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], str(folder / SINGLE_FILE), metadata={"format": "np"})
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "np"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.nbytes for t in tensors.values())
    write_atomic(folder / INDEX_FILE, json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                 indent=2))
