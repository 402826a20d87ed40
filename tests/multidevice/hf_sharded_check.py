"""Run in its own process with 8 fake CPU devices (set XLA_FLAGS before importing jax).

Builds a tiny random Qwen2 folder with ``transformers`` (GQA, qkv bias, untied head),
imports it on a 1-device mesh and on a 2x2x2 (data, fsdp, tensor) mesh, and prints one JSON
line: each parameter's wanted and actual sharding, the largest logit difference between
the sharded and the single-device forward, and between ours and ``transformers``.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from hf_models import build_folder, hf_logits  # noqa: E402

from dllm_jax.config import MeshConfig  # noqa: E402
from dllm_jax.nn import apply_model  # noqa: E402
from dllm_jax.nn.convert import load_hf  # noqa: E402
from dllm_jax.sharding import batch_sharding, logical_axes, logical_to_spec, make_mesh  # noqa: E402


def main():
    assert jax.device_count() == 8, jax.devices()
    folder = Path(tempfile.mkdtemp()) / "qwen2"
    model = build_folder(folder, "qwen2", tie=False, vocab=320, hidden=64, heads=4, kv_heads=2)
    tokens = np.random.default_rng(0).integers(0, 320, (4, 32))
    ref = hf_logits(model, tokens)
    out = {"born": []}
    logits = {}
    for name, mesh in (("one", make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])),
                       ("eight", make_mesh(MeshConfig(2, 2, 2)))):
        imported = load_hf(folder, mesh)
        if name == "eight":
            for path, var in nnx.to_flat_state(imported.params):
                want = logical_to_spec(logical_axes(var), var.get_value().shape, mesh)
                got = var.get_value().sharding.spec
                out["born"].append([".".join(map(str, path)), str(want), str(got), tuple(want) == tuple(got)])
        with jax.set_mesh(mesh):
            x = jax.device_put(jnp.asarray(tokens), batch_sharding(mesh))
            logits[name] = np.asarray(jax.jit(apply_model, static_argnums=0)(imported.graphdef, imported.params, x))
    out["max_sharded_vs_single"] = float(np.abs(logits["eight"] - logits["one"]).max())
    out["max_vs_transformers"] = float(np.abs(logits["eight"] - ref).max())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
