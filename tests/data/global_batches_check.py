"""Run in its own process with 8 fake CPU devices (set before JAX is imported).

Builds global batches from the embedded validation split on 1 device and on two 8-device
meshes and prints one JSON line: whether every device holds exactly its rows of the
1-device batch, and the specs seen. Argument: a tokenizer model path.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from dllm_jax.config import MeshConfig  # noqa: E402
from dllm_jax.data import GlobalBatches, PackedSequences, Tokenizer, embedded_corpus  # noqa: E402
from dllm_jax.data.pipeline import process_rows  # noqa: E402
from dllm_jax.sharding import make_mesh  # noqa: E402

BATCH, STEPS = 16, 3


def batches(mesh, tokenizer):
    seqs = PackedSequences(embedded_corpus("validation"), tokenizer, 32, seed=1)
    it = GlobalBatches(seqs, BATCH, mesh)
    return [next(it) for _ in range(STEPS)]


def main():
    tokenizer = Tokenizer.load(sys.argv[1])
    reference = batches(make_mesh(MeshConfig(), jax.devices()[:1]), tokenizer)
    result = {"devices": jax.device_count(), "meshes": []}
    for config in (MeshConfig(data=4, fsdp=2), MeshConfig(data=2, fsdp=1, tensor=4)):
        mesh = make_mesh(config)
        ok = True
        for ref, got in zip(reference, batches(mesh, tokenizer), strict=True):
            for key in ("tokens", "loss_mask", "index"):
                ok &= np.array_equal(np.asarray(got[key]), np.asarray(ref[key]))
                for shard in got[key].addressable_shards:  # each device holds its own rows
                    ok &= np.array_equal(np.asarray(shard.data), np.asarray(ref[key])[shard.index])
                    ok &= shard.data.shape[0] == BATCH // (config.data * config.fsdp)
        result["meshes"].append(
            {
                "config": [config.data, config.fsdp, config.tensor],
                "spec": str(got["tokens"].sharding.spec),
                "index_spec": str(got["index"].sharding.spec),
                "rows": process_rows(mesh, BATCH).tolist(),
                "ok": bool(ok),
            }
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
