"""Importing and exporting Hugging Face Llama / Qwen2 folders, checked against ``transformers``.

The models are tiny random ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` built by
``transformers`` from a config (grouped-query attention: 4 query heads, 2 kv heads; Qwen2's
qkv bias; tied and untied embeddings) and written with ``save_pretrained``; the tokenizer
is a byte-level BPE trained here with ``tokenizers`` (``hf_models``).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")  # the test extra installs torch + transformers
import torch  # noqa: E402
import transformers  # noqa: E402
from hf_models import build_folder, hf_logits  # noqa: E402

from dllm_jax.config import MeshConfig  # noqa: E402
from dllm_jax.data.hf_tokenizer import HFTokenizer  # noqa: E402
from dllm_jax.nn import apply_model  # noqa: E402
from dllm_jax.nn.convert import export_hf, load_hf, read_config  # noqa: E402
from dllm_jax.sampling.draws import Logits  # noqa: E402
from dllm_jax.sampling.kv_decode import ar_generate  # noqa: E402
from dllm_jax.sharding import make_mesh  # noqa: E402
from dllm_jax.training.run_dir import load_run  # noqa: E402

VOCAB = 320
CASES = [("llama", False), ("llama", True), ("qwen2", False), ("qwen2", True)]
_forward = jax.jit(apply_model, static_argnums=0)


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(MeshConfig())


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{(kind, tied): (folder, torch model)}."""
    out = {}
    for i, (kind, tie) in enumerate(CASES):
        folder = tmp_path_factory.mktemp(f"{kind}_{'tied' if tie else 'untied'}")
        out[kind, tie] = folder, build_folder(folder, kind, tie=tie, seed=i, vocab=VOCAB)
    return out


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, VOCAB, (2, 48))


def _listing(folder):
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir())


@pytest.mark.parametrize("kind,tie", CASES)
def test_logits_equal_transformers(folders, mesh, tokens, kind, tie):
    folder, model = folders[kind, tie]
    before = _listing(folder)
    imported = load_hf(folder, mesh)
    config = imported.config
    assert (config.num_heads, config.kv_heads, config.qkv_bias, config.tie_embeddings) == (4, 2, kind == "qwen2", tie)
    assert config.attention == "causal" and config.num_tokens == VOCAB and config.norm_eps == 1e-5
    assert ("head" in imported.params) != tie
    ours = np.asarray(_forward(imported.graphdef, imported.params, jnp.asarray(tokens)))
    ref = hf_logits(model, tokens)
    err = np.abs(ours - ref).max()
    print(f"{kind} tied={tie}: max |ours - transformers| = {err:.2e} (logits up to {np.abs(ref).max():.1f})")
    assert ref.std() > 0.5  # far from uniform: the comparison means something
    assert err < 1e-4
    assert _listing(folder) == before  # loading writes nothing


@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "factor": 4.0, "rope_theta": 500.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 32, "rope_theta": 500.0},
])
def test_rope_scaling_equals_transformers(tmp_path, mesh, rope):
    """Llama 3.1's wavelength-dependent rope scaling (and linear scaling), at positions past
    the original context; theta 500 puts the head's frequencies in all three of llama3's bands."""
    model = build_folder(tmp_path / "m", "llama", vocab=VOCAB, max_pos=128, rope_parameters=rope)
    imported = load_hf(tmp_path / "m", mesh)
    assert imported.config.rope_scaling == rope["rope_type"] and imported.config.rope_factor == rope["factor"]
    toks = np.random.default_rng(1).integers(0, VOCAB, (1, 128))
    ours = np.asarray(_forward(imported.graphdef, imported.params, jnp.asarray(toks)))
    assert np.abs(ours - hf_logits(model, toks)).max() < 1e-4


@pytest.mark.parametrize("kind,tie", [("llama", False), ("qwen2", True)])
def test_greedy_kv_cache_decoding_equals_transformers_generate(folders, mesh, kind, tie):
    folder, model = folders[kind, tie]
    imported = load_hf(folder, mesh)
    tok = HFTokenizer.load(folder, VOCAB)
    prompts = [tok.encode(t) for t in ("def load_hf(folder", "import jax", "x")]
    gen = ar_generate(imported.graphdef, imported.params, prompts, length=24, logits=Logits(top_k=1),
                      prompt_starts=True)
    for prompt, ours in zip(prompts, gen.completions(), strict=True):
        out = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
        assert ours == out[0, len(prompt):].tolist()
    assert all(row[: len(p)].tolist() == p for row, p in zip(gen.tokens, prompts, strict=True))


@pytest.mark.parametrize("kind,tie", [("llama", True), ("qwen2", False)])
def test_export_loads_in_transformers_with_the_same_logits(folders, mesh, tokens, tmp_path, kind, tie):
    folder, _ = folders[kind, tie]
    imported = load_hf(folder, mesh)
    ours = np.asarray(_forward(imported.graphdef, imported.params, jnp.asarray(tokens)))
    out = export_hf(tmp_path / "exported", imported.config, imported.params, HFTokenizer.load(folder, VOCAB),
                    max_shard_bytes=40_000)  # several shards + an index
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("model-*.safetensors"))) > 1
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert np.abs(hf_logits(reloaded, tokens) - ours).max() < 1e-4
    again = load_hf(out, mesh)  # our own re-import is exact, special rows included
    assert again.config == imported.config
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(imported.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert HFTokenizer.load(out, VOCAB) == HFTokenizer.load(folder, VOCAB)


def test_export_keeps_an_adapted_models_config(folders, mesh, tmp_path):
    """A model adapted here (block diffusion with shift) re-imports with its own config."""
    folder, _ = folders["qwen2", True]
    adapted = load_hf(folder, mesh, attention="block_causal", block_size=4, shift=True, max_len=64)
    out = export_hf(tmp_path / "adapted", adapted.config, adapted.params)
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2"
    assert read_config(out) == adapted.config


def test_tokenizer_ids_equal_transformers(folders):
    folder, _ = folders["llama", False]
    ours = HFTokenizer.load(folder, num_tokens=VOCAB)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    texts = ["def load_hf(folder, mesh):", "  indented\n\ttabs and ünïcödé ✓", "<|endoftext|>after", ""]
    for text in texts:
        ids = ours.encode(text)
        assert ids == theirs(text, add_special_tokens=False)["input_ids"]
        assert ours.decode(ids) == text == theirs.decode(ids)
    assert ours.encode_batch(texts) == [ours.encode(t) for t in texts]
    assert ours.eos_id == theirs.eos_token_id == 0
    assert ours.decode(ours.encode("ab") + [VOCAB, VOCAB + 2]) == "ab"  # our pad / mask are dropped
    lengths = ours.utf8_lengths()  # bits per byte: a text's bytes are the sum over its ids
    for text in texts:
        assert lengths[ours.encode(text)].sum() == len(text.encode()) - text.count("<|endoftext|>") * 13
    import pickle

    assert pickle.loads(pickle.dumps(ours)) == ours


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def sharded_copy(folders, mesh, tmp_path):
    folder, _ = folders["llama", False]
    imported = load_hf(folder, mesh)
    return export_hf(tmp_path / "copy", imported.config, imported.params, HFTokenizer.load(folder, VOCAB),
                     max_shard_bytes=40_000)


def test_missing_shard_is_named(sharded_copy, mesh):
    shard = sorted(sharded_copy.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{shard.name}: listed in model.safetensors.index.json but missing"):
        load_hf(sharded_copy, mesh)


def test_truncated_file_is_named(sharded_copy, mesh):
    shard = sorted(sharded_copy.glob("model-*.safetensors"))[0]
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) - 64)
    with pytest.raises(ValueError, match=rf"{shard.name} is not a readable safetensors file \(truncated"):
        load_hf(sharded_copy, mesh)


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_shape_mismatch_names_the_tensor(sharded_copy, mesh):
    _edit_config(sharded_copy, intermediate_size=80)
    (sharded_copy / "dllm_jax.json").unlink()
    with pytest.raises(ValueError, match=r"'model.layers.0.mlp.down_proj.weight' in model-\d+-of-\d+.safetensors "
                                         r"has shape \(64, 96\), the config implies \(64, 80\)"):
        load_hf(sharded_copy, mesh)


@pytest.mark.parametrize("changes,message", [
    ({"model_type": "gpt2"}, r"config.json: model_type 'gpt2' is not supported \(supported: llama, qwen2\)"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, r"rope type 'yarn' is not supported"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}, "rope_parameters": None}, r"rope type 'dynamic'"),
    ({"hidden_act": "gelu"}, r"hidden_act='gelu' is not supported"),
    ({"num_key_value_heads": 3}, r"num_kv_heads=3 must divide num_heads=4"),
    ({"head_dim": 32}, r"head_dim=32 with num_attention_heads=4 does not equal hidden_size=64"),
])
def test_unsupported_configs_are_refused(sharded_copy, mesh, changes, message):
    _edit_config(sharded_copy, **changes)
    (sharded_copy / "dllm_jax.json").unlink()
    with pytest.raises(ValueError, match=message):
        load_hf(sharded_copy, mesh)


def test_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path, mesh):
    folder = tmp_path / "small"
    build_folder(folder, "llama", vocab=200)  # the tokenizer has 300 tokens
    before = _listing(folder)
    message = r"tokenizer.json: the tokenizer has 300 tokens but the model's vocabulary has 200"
    with pytest.raises(ValueError, match=message):
        HFTokenizer.load(folder, read_config(folder).num_tokens)
    with pytest.raises(ValueError, match=message):  # what sample / evaluate / train --init_from run
        load_run(folder)
    assert _listing(folder) == before


def test_export_never_replaces_a_folder(sharded_copy, mesh):
    before = _listing(sharded_copy)
    imported = load_hf(sharded_copy, mesh)
    with pytest.raises(FileExistsError, match="exists: export_hf writes a new folder"):
        export_hf(sharded_copy, imported.config, imported.params)
    time_model = imported.config.__class__(**{**imported.config.__dict__, "time_conditioning": True})
    with pytest.raises(ValueError, match="cannot export a model with time_conditioning"):
        export_hf(sharded_copy.parent / "new", time_model, imported.params)
    assert _listing(sharded_copy) == before and not (sharded_copy.parent / "new").exists()
    assert not list(sharded_copy.parent.glob(".new.*"))
