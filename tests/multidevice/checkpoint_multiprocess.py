"""One of two JAX processes (one CPU device each) sharing a checkpoint directory.

Usage: ``checkpoint_multiprocess.py PROCESS_ID PORT DIRECTORY``. Both processes save a tree
of global arrays sharded over the two processes' devices at steps 1, 2 and 3. Process 0 then
truncates a file of step 3 that only process 1's shards live in (as a partial copy would),
and alters a stored fingerprint of step 2 (as if its values had rotted; found only after
reading). Both processes must skip both steps and restore step 1. Prints one JSON line.
"""

import json
import os
import sys
import warnings

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
PROCESS, PORT, DIRECTORY = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(f"localhost:{PORT}", num_processes=2, process_id=PROCESS)

import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from dllm_jax.checkpoint import (  # noqa: E402
    MANIFEST,
    META_FILE,
    Checkpointer,
    IncompleteCheckpointWarning,
)
from dllm_jax.config import MeshConfig  # noqa: E402
from dllm_jax.sharding import make_mesh  # noqa: E402

SPECS = {"w": P("fsdp", None), "e": P(None, "fsdp"), "b": P(), "step": P()}
SHAPES = {"w": (64, 48), "e": (3, 32, 16), "b": (48,), "step": ()}


def make_tree(mesh, step: int):
    """Global arrays (each process fills its own shards) with values set by ``step``."""
    out = {}
    for name, shape in SHAPES.items():
        rng = np.random.default_rng([step, len(name)])
        full = rng.standard_normal(shape).astype(np.float32)
        if name == "step":
            full = np.int32(step)
        sharding = NamedSharding(mesh, SPECS[name])
        out[name] = jax.make_array_from_callback(shape, sharding, lambda idx, f=full: f[idx])
    return out


def local_bytes(tree) -> list[bytes]:
    return [
        np.asarray(s.data).tobytes() for x in jax.tree.leaves(tree) for s in x.addressable_shards
    ]


def main():
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=1))
    trees = {step: make_tree(mesh, step) for step in (1, 2, 3)}
    with Checkpointer(DIRECTORY) as ckpt:
        for step, tree in trees.items():
            ckpt.save(step, tree, {"step": step})
    multihost_utils.sync_global_devices("saved")
    if PROCESS == 0:
        data = os.path.join(DIRECTORY, "3", "state", "ocdbt.process_1", "d")
        victim = max((os.path.join(data, f) for f in os.listdir(data)), key=os.path.getsize)
        os.truncate(victim, os.path.getsize(victim) // 2)
        os.remove(os.path.join(DIRECTORY, "2", MANIFEST))
        meta_file = os.path.join(DIRECTORY, "2", META_FILE)
        with open(meta_file) as f:
            meta = json.load(f)
        leaf = max(meta["leaves"].values(), key=lambda v: np.prod(v["shape"]))
        leaf["hash"] = (leaf["hash"] + 1) % 2**32
        with open(meta_file, "w") as f:
            json.dump(meta, f)
    multihost_utils.sync_global_devices("damaged")

    ckpt = Checkpointer(DIRECTORY)
    latest_before = ckpt.latest_step()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restored, meta = ckpt.restore(trees[1])
    skipped = [str(w.message) for w in caught if w.category is IncompleteCheckpointWarning]
    print(
        json.dumps(
            {
                "process": PROCESS,
                "latest_before": latest_before,
                "latest_after": ckpt.latest_step(),
                "meta": meta,
                "exact": local_bytes(restored) == local_bytes(trees[1]),
                "sharded": any(not x.is_fully_addressable for x in jax.tree.leaves(restored)),
                "skipped": skipped,
            }
        )
    )


if __name__ == "__main__":
    main()
