"""One process of a multi-process CPU run (or a single process), printing losses as JSON.

Usage: multihost_check.py NUM_PROCESSES PROCESS_ID PORT LOCAL_DEVICES STEPS
With NUM_PROCESSES=1 it is the single-process reference. Each process builds only its own
rows of every global batch and assembles global arrays with
``jax.make_array_from_process_local_data``.
"""

import json
import os
import sys

num_processes, process_id, port, local_devices, steps = map(int, sys.argv[1:6])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
os.environ["JAX_PLATFORMS"] = "cpu"
if num_processes > 1:
    os.environ.update(DLLM_COORDINATOR=f"127.0.0.1:{port}", DLLM_NUM_PROCESSES=str(num_processes),
                      DLLM_PROCESS_ID=str(process_id))

from dllm_jax.training.distributed import maybe_initialize_distributed  # noqa: E402

maybe_initialize_distributed()

import jax  # noqa: E402

from dllm_jax.config import MeshConfig, ModelConfig, NoiseConfig, TrainConfig  # noqa: E402
from dllm_jax.data import MarkovChain, batches  # noqa: E402
from dllm_jax.diffusion import make_objective  # noqa: E402
from dllm_jax.sharding import batch_sharding, make_mesh  # noqa: E402
from dllm_jax.training import create_train_state, jit_train_step, make_train_step  # noqa: E402


def main():
    assert jax.process_count() == num_processes and jax.device_count() == 4, jax.devices()
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=1))
    model = ModelConfig(num_tokens=8, max_len=16, d_model=32, num_layers=2, num_heads=4, mlp_dim=64)
    train = TrainConfig(batch_size=8, seq_len=16, steps=steps, lr=3e-3, warmup_steps=1)
    objective = make_objective(NoiseConfig(process="masked"), 8)
    graphdef, state, tx = create_train_state(model, train, mesh)
    step = jit_train_step(make_train_step(objective, graphdef, tx, train), state, mesh)
    it = batches(MarkovChain(8, 2).sample(128, 16, seed=5), train.batch_size)
    rows = train.batch_size // num_processes
    mine = slice(process_id * rows, (process_id + 1) * rows)
    losses = []
    for _ in range(steps):
        host = next(it)
        batch = {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v[mine])
                 for k, v in host.items()}
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    norm = float(jax.jit(lambda p: sum((x.astype("float32") ** 2).sum() for x in jax.tree.leaves(p)))(state.params))
    print(json.dumps({"process": process_id, "losses": losses, "param_sq_norm": norm}))


if __name__ == "__main__":
    main()
