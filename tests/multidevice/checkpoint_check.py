"""Run in its own process with 8 fake CPU devices (set XLA_FLAGS before importing jax).

Saves arrays and model parameters sharded on a 2x4 mesh, restores them onto a 4x2 mesh and
onto one device, and prints one JSON line: for each target, whether every leaf is bit-exact
and carries the target's sharding.
"""

import json
import os
import sys
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from dllm_jax.checkpoint import Checkpointer  # noqa: E402
from dllm_jax.config import MeshConfig, ModelConfig  # noqa: E402
from dllm_jax.nn import create_model, param_shardings  # noqa: E402
from dllm_jax.sharding import make_mesh  # noqa: E402

MODEL = ModelConfig(num_tokens=11, d_model=32, num_heads=4, num_layers=2, max_len=16)
SPECS = {"w": P("a", "b"), "v": P("b"), "e": P(None, "a", "b"), "h": P("b", None), "s": P()}


def arrays(mesh):
    """Plain arrays (values from fixed keys) placed with SPECS on a mesh with axes (a, b)."""
    k = jax.random.split(jax.random.key(1), 3)
    values = {
        "w": jax.random.normal(k[0], (16, 32)),
        "v": jnp.arange(8, dtype=jnp.int32),
        "e": jax.random.normal(k[1], (4, 8, 16)).astype(jnp.bfloat16),
        "h": jax.random.bernoulli(k[2], 0.5, (8, 3)),
        "s": jnp.int32(12345),
    }
    return {n: jax.device_put(x, NamedSharding(mesh, SPECS[n])) for n, x in values.items()}


def abstract(tree, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def compare(restored, expected, target) -> dict:
    exact = jax.tree.map(
        lambda a, b: bool(
            a.dtype == b.dtype and np.asarray(a).tobytes() == np.asarray(b).tobytes()
        ),
        restored,
        expected,
    )
    placed = jax.tree.map(
        lambda a, t: a.sharding.is_equivalent_to(t.sharding, a.ndim), restored, target
    )
    return {"exact": all(jax.tree.leaves(exact)), "placed": all(jax.tree.leaves(placed))}


def main(directory):
    devices = jax.devices()
    assert len(devices) == 8, devices
    auto = (AxisType.Auto,) * 2
    mesh24 = jax.make_mesh((2, 4), ("a", "b"), axis_types=auto, devices=devices)
    mesh42 = jax.make_mesh((4, 2), ("a", "b"), axis_types=auto, devices=devices)
    mesh11 = jax.make_mesh((1, 1), ("a", "b"), axis_types=auto, devices=devices[:1])
    _, params = create_model(MODEL, make_mesh(MeshConfig(data=1, fsdp=2, tensor=4)), seed=0)
    saved = {"arrays": arrays(mesh24), "params": params}
    sharded = [
        str(x.sharding.spec) for x in jax.tree.leaves(params) if len(x.sharding.device_set) > 1
    ]
    with Checkpointer(directory) as ckpt:
        ckpt.save(1, saved, {"mesh": "2x4"})

    results = {"sharded_params": sharded}
    for name, mesh, model_mesh in [
        ("4x2", mesh42, make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))),
        ("1", mesh11, make_mesh(MeshConfig(data=1), devices=devices[:1])),
    ]:
        shardings = {
            "arrays": {n: NamedSharding(mesh, s) for n, s in SPECS.items()},
            "params": param_shardings(MODEL, model_mesh),
        }
        target = abstract(saved, shardings)
        with Checkpointer(directory) as ckpt:
            restored, meta = ckpt.restore(target)
        results[name] = compare(restored, saved, target) | {"meta": meta}
    print(json.dumps(results))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as d:
            main(os.path.join(d, "ckpt"))
