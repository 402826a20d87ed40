"""Run in its own process with 8 fake CPU devices (set XLA_FLAGS before importing jax).

Trains the same tiny model on a 1-device mesh and on a 2x2x2 (data, fsdp, tensor) mesh and
prints one JSON line: per-step losses of both, the max parameter difference, and whether
every parameter was born with the sharding its logical axes ask for.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from dllm_jax.config import MeshConfig, ModelConfig, NoiseConfig, TrainConfig  # noqa: E402
from dllm_jax.data import MarkovChain, batches  # noqa: E402
from dllm_jax.diffusion import make_objective  # noqa: E402
from dllm_jax.sharding import logical_axes, logical_to_spec, make_mesh  # noqa: E402
from dllm_jax.training import create_train_state, jit_train_step, make_train_step  # noqa: E402


def train(mesh, process: str, dtype: str, steps: int):
    model = ModelConfig(num_tokens=8, max_len=16, d_model=32, num_layers=2, num_heads=4,
                        mlp_dim=64, dtype=dtype, time_conditioning=process == "uniform",
                        time_embed_dim=16)
    train_cfg = TrainConfig(batch_size=16, seq_len=16, steps=steps, lr=3e-3, warmup_steps=2, ema_decay=0.9)
    objective = make_objective(NoiseConfig(process=process), model.num_tokens)
    graphdef, state, tx = create_train_state(model, train_cfg, mesh)
    born = []
    for path, var in nnx.to_flat_state(state.params):
        want = logical_to_spec(logical_axes(var), var.get_value().shape, mesh)
        got = var.get_value().sharding.spec
        born.append([".".join(map(str, path)), str(want), str(got), want == got or (tuple(want) == tuple(got))])
    step = jit_train_step(make_train_step(objective, graphdef, tx, train_cfg), state, mesh)
    data = MarkovChain(8, 2).sample(256, 16, seed=3)
    it = batches(data, 16)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, {k: jnp.asarray(v) for k, v in next(it).items()})
        losses.append(float(metrics["loss"]))
    params = [np.asarray(x) for x in jax.tree.leaves(state.params)]
    ema = [np.asarray(x) for x in jax.tree.leaves(state.ema)]
    return losses, params, ema, born


def main():
    process, dtype, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    assert jax.device_count() == 8, jax.devices()
    one = make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    eight = make_mesh(MeshConfig(2, 2, 2))
    l1, p1, e1, _ = train(one, process, dtype, steps)
    l8, p8, e8, born = train(eight, process, dtype, steps)
    print(json.dumps({
        "losses_1": l1,
        "losses_8": l8,
        "max_param_diff": max(float(np.abs(a - b).max()) for a, b in zip(p1, p8, strict=False)),
        "max_ema_diff": max(float(np.abs(a - b).max()) for a, b in zip(e1, e8, strict=False)),
        "ema_moved": max(float(np.abs(a - b).max()) for a, b in zip(e8, p8, strict=False)),
        "born": born,
        "param_dtypes": sorted({str(x.dtype) for x in p8}),
    }))


if __name__ == "__main__":
    main()
