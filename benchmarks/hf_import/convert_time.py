"""Time to import (and export) a Qwen2.5-0.5B-shaped Hugging Face folder on this machine.

A random ``Qwen2ForCausalLM`` with Qwen2.5-0.5B's shapes (24 layers, d_model 896, 14 query
heads / 2 kv heads, MLP 4864, vocabulary 151,936, tied embeddings, qkv bias, rope theta
1e6) is built by ``transformers`` and saved in bfloat16, as the released checkpoint is.
Then: ``load_hf`` (config + safetensors -> float32 params born in their shardings on a
1-device mesh), a forward pass compared with ``transformers`` on the same tokens (float32),
and ``export_hf``. Writes ``results.json`` beside this file.

    python benchmarks/hf_import/convert_time.py [--layers 24] [--out benchmarks/hf_import/results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dllm_jax.nn import apply_model, count_params  # noqa: E402
from dllm_jax.nn.convert import export_hf, load_hf  # noqa: E402
from dllm_jax.sharding import make_mesh  # noqa: E402

QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_attention_heads=14,
                  num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1_000_000.0,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151643)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp())
    try:
        config = Qwen2Config(num_hidden_layers=args.layers, **QWEN25_05B)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
        model.save_pretrained(root / "qwen", max_shard_size="500MB")
        build_s = time.perf_counter() - t0
        files = sorted(p.name for p in (root / "qwen").glob("*.safetensors"))
        disk = sum(p.stat().st_size for p in (root / "qwen").glob("*.safetensors"))
        print(f"built + saved in {build_s:.1f}s: {files} ({disk / 2**30:.2f} GiB)", flush=True)

        mesh = make_mesh()
        t0 = time.perf_counter()
        imported = load_hf(root / "qwen", mesh, max_len=2048)
        jax.block_until_ready(imported.params)
        load_s = time.perf_counter() - t0
        n = count_params(imported.params)
        print(f"load_hf: {load_s:.1f}s for {n:,} parameters", flush=True)

        tokens = np.random.default_rng(0).integers(0, config.vocab_size, (1, 64))
        ours = np.asarray(jax.jit(apply_model, static_argnums=0)(imported.graphdef, imported.params,
                                                                 jnp.asarray(tokens)))
        with torch.no_grad():
            ref = model.float()(torch.as_tensor(tokens)).logits.numpy()
        err = float(np.abs(ours - ref).max())
        print(f"max |ours - transformers| logits (float32): {err:.2e} (logits up to {np.abs(ref).max():.2f})")

        t0 = time.perf_counter()
        export_hf(root / "exported", imported.config, imported.params)
        export_s = time.perf_counter() - t0
        print(f"export_hf: {export_s:.1f}s", flush=True)
        result = {
            "model": f"Qwen2.5-0.5B shapes, {args.layers} layers, random bf16 weights",
            "parameters_ours": n, "safetensors_files": files, "safetensors_gib": round(disk / 2**30, 3),
            "load_hf_s": round(load_s, 2), "export_hf_float32_s": round(export_s, 2),
            "max_abs_logit_diff_vs_transformers": err, "max_abs_logit": float(np.abs(ref).max()),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "machine": f"{platform.machine()}, {jax.devices()[0].device_kind}, jax {jax.__version__}",
            "command": "python benchmarks/hf_import/convert_time.py",
        }
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
