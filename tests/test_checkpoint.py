"""Checkpointer: bit-exact round trips, keep-last-N plus best, interrupted and damaged saves
(simulated and a real SIGKILL), restore onto other mesh shapes, and clear errors."""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dllm_jax.checkpoint import (
    COMMIT_MARKER,
    MANIFEST,
    TMP_SUFFIX,
    Checkpointer,
    CorruptCheckpointError,
    IncompleteCheckpointWarning,
)
from dllm_jax.checkpoint.integrity import leaf_hash
from dllm_jax.config import MeshConfig, ModelConfig
from dllm_jax.nn import create_model
from dllm_jax.sharding import make_mesh

ROOT = Path(__file__).resolve().parents[1]
MULTIDEVICE_SCRIPT = ROOT / "tests" / "multidevice" / "checkpoint_check.py"
MULTIPROCESS_SCRIPT = ROOT / "tests" / "multidevice" / "checkpoint_multiprocess.py"


def bits(tree) -> list[tuple[str, bytes]]:
    """Every leaf's dtype and raw bytes: equality of these is bit-exactness."""
    return [(str(np.asarray(x).dtype), np.asarray(x).tobytes()) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def train_like_tree():
    config = ModelConfig(num_tokens=11, d_model=32, num_heads=4, num_layers=2, max_len=16)
    _, params = create_model(config, make_mesh(MeshConfig()), seed=0)
    opt_state = optax.adamw(1e-3).init(params)
    # One Adam update so the moments are not all zeros.
    grads = jax.tree.map(lambda p: jnp.sin(p * 3.0), params)
    _, opt_state = optax.adamw(1e-3).update(grads, opt_state, params)
    return {
        "params": params,
        "opt": opt_state,
        "step": jnp.int32(41),
        "extra": {
            "host": np.arange(7, dtype=np.int64),
            "bf16": jnp.full((3, 5), 0.1, jnp.bfloat16),
        },
    }


def abstract(x):
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x


def small_tree(i: int):
    return {"w": jnp.arange(300, dtype=jnp.float32).reshape(3, 100) + i, "n": jnp.int32(i)}


def test_round_trip_is_bit_exact(tmp_path, train_like_tree):
    tree = train_like_tree
    metadata = {
        "config": {"d_model": 32, "lr": 1e-3, "names": ["a", "b"]},
        "data": {"epoch": 2, "pos": 17},
    }
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        t0 = time.perf_counter()
        assert ckpt.save(41, tree, metadata)
        t1 = time.perf_counter()
        target = jax.tree.map(abstract, tree)
        restored, meta = ckpt.restore(target)
        t2 = time.perf_counter()
        restored_again, _ = ckpt.restore(tree)  # concrete arrays as the target
        t3 = time.perf_counter()
        print(
            f"save {t1 - t0:.3f}s, restore (first) {t2 - t1:.3f}s, restore (again) {t3 - t2:.3f}s"
        )
        assert ckpt.metadata() == metadata == meta
    assert jax.tree.structure(restored) == jax.tree.structure(tree)
    assert type(restored["params"]) is type(tree["params"])  # noqa: E721 - an nnx.State
    assert bits(restored) == bits(tree)
    assert bits(restored_again) == bits(tree)
    for got, want in zip(
        jax.tree.leaves(restored["params"]), jax.tree.leaves(tree["params"]), strict=True
    ):
        assert got.sharding == want.sharding
    # JSON metadata on disk equals what was given.
    saved = json.loads((tmp_path / "ckpt" / "41" / "meta" / "metadata").read_text())
    assert saved["metadata"] == metadata


@pytest.mark.parametrize(
    "best_metric,best_mode,sign,kept,best",
    [
        ("val", "min", 1.0, [2, 5, 6], 2),
        ("val", "max", -1.0, [2, 5, 6], 2),
        (None, "min", 1.0, [5, 6], None),
    ],
)
def test_keeps_last_n_plus_best(tmp_path, best_metric, best_mode, sign, kept, best):
    vals = [5.0, 1.0, 4.0, 3.0, 2.5, 2.0]  # step 2 is the best; 5 and 6 are the last two
    with Checkpointer(
        tmp_path, max_to_keep=2, best_metric=best_metric, best_mode=best_mode
    ) as ckpt:
        for step, val in enumerate(vals, start=1):
            ckpt.save(step, small_tree(step), {"step": step}, metrics={"val": sign * val})
        assert ckpt.all_steps() == kept
        assert ckpt.best_step() == best
        assert ckpt.latest_step() == 6
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == kept
    reopened = Checkpointer(tmp_path, max_to_keep=2, best_metric=best_metric, best_mode=best_mode)
    assert (reopened.all_steps(), reopened.best_step()) == (kept, best)
    if best is not None:
        tree, meta = reopened.restore(small_tree(0), step=best)
        assert meta == {"step": 2} and bits(tree) == bits(small_tree(2))


def largest_array_file(step_dir: Path) -> Path:
    return max(
        glob.glob(str(step_dir / "state" / "**" / "d" / "*"), recursive=True), key=os.path.getsize
    )


def damage(step_dir: Path, kind: str):
    if kind == "tmp_dir":  # what a kill leaves behind: the step under orbax's temporary name
        step_dir.rename(step_dir.with_name(step_dir.name + TMP_SUFFIX))
    elif kind == "no_commit_marker":  # e.g. a non-atomic filesystem, killed before commit
        (step_dir / COMMIT_MARKER).unlink()
    elif kind == "truncated":  # caught by the manifest of file sizes
        f = largest_array_file(step_dir)
        os.truncate(f, os.path.getsize(f) // 2)
    elif kind == "truncated_no_manifest":  # caught when tensorstore reads the file
        (step_dir / MANIFEST).unlink()
        f = largest_array_file(step_dir)
        os.truncate(f, os.path.getsize(f) // 2)
    elif kind == "flipped_bit":  # same size, still decodes: caught by the leaf fingerprints
        f = largest_array_file(step_dir)
        with open(f, "r+b") as fh:
            fh.seek(os.path.getsize(f) // 2)
            byte = fh.read(1)[0]
            fh.seek(-1, os.SEEK_CUR)
            fh.write(bytes([byte ^ 0x10]))


def random_tree(i: int):
    return {"w": jax.random.normal(jax.random.key(i), (64, 256)), "n": jnp.int32(i)}


@pytest.mark.parametrize(
    "kind,cheap",
    [
        ("tmp_dir", True),
        ("no_commit_marker", True),
        ("truncated", True),
        ("truncated_no_manifest", False),
        ("flipped_bit", False),
    ],
)
# orbax abandons the other reads of a step once one fails; their coroutines then complain.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_damaged_latest_step_falls_back(tmp_path, kind, cheap):
    with Checkpointer(tmp_path) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, random_tree(step), {"step": step})
    damage(tmp_path / "3", kind)

    ckpt = Checkpointer(tmp_path)
    if cheap:  # found without reading arrays
        with pytest.warns(IncompleteCheckpointWarning, match="step 3"):
            assert ckpt.latest_step() == 2
    else:
        assert ckpt.latest_step() == 3
    with pytest.warns(IncompleteCheckpointWarning, match="step 3"):
        tree, meta = ckpt.restore(random_tree(0))
    assert meta == {"step": 2}
    assert bits(tree) == bits(random_tree(2))
    assert ckpt.latest_step() == 2  # now known to be damaged
    with pytest.raises(CorruptCheckpointError, match="step 3"):
        Checkpointer(tmp_path).restore(random_tree(0), step=3)
    # Training on from step 2 saves step 3 again: the damaged one is set aside (kept, not
    # deleted) and the new one replaces it; an interrupted save left only a temporary dir.
    before = sorted(p.name for p in tmp_path.iterdir())
    if kind == "tmp_dir":
        ckpt.save(3, random_tree(30), {"step": 30})
        assert not glob.glob(str(tmp_path / f"*{TMP_SUFFIX}*"))
    else:
        with pytest.warns(IncompleteCheckpointWarning, match=r"step 3 .* moved to 3\.damaged"):
            ckpt.save(3, random_tree(30), {"step": 30})
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + ["3.damaged"])
    assert ckpt.all_steps() == [1, 2, 3]
    assert bits(ckpt.restore(random_tree(0))[0]) == bits(random_tree(30))
    assert bits(Checkpointer(tmp_path).restore(random_tree(0))[0]) == bits(random_tree(30))


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    import jax.numpy as jnp
    from dllm_jax.checkpoint import Checkpointer

    directory = sys.argv[1]
    def tree(i):  # 4 x 16 MiB of float32
        return {f"w{k}": jnp.arange(4 * 2**20, dtype=jnp.float32) + i + k for k in range(4)}

    ckpt = Checkpointer(directory)
    ckpt.save(1, tree(1), {"step": 1})

    def kill_once_writing():
        tmp = os.path.join(directory, "2.orbax-checkpoint-tmp")
        while not os.path.isdir(tmp):
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=kill_once_writing, daemon=True).start()
    ckpt.save(2, tree(2), {"step": 2})
    print("SAVE FINISHED BEFORE THE KILL")
    sys.exit(3)
    """
)


def test_sigkill_during_save_leaves_previous_step_restorable(tmp_path):
    directory = tmp_path / "ckpt"
    out = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(directory)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == -signal.SIGKILL, (out.returncode, out.stdout, out.stderr[-3000:])
    assert (directory / f"2{TMP_SUFFIX}").is_dir()  # the kill did interrupt step 2
    expected = {f"w{k}": np.arange(4 * 2**20, dtype=np.float32) + 1 + k for k in range(4)}
    ckpt = Checkpointer(directory)
    with pytest.warns(IncompleteCheckpointWarning, match="step 2.*interrupted save"):
        assert ckpt.latest_step() == 1
    with pytest.warns(IncompleteCheckpointWarning, match="step 2"):
        tree, meta = ckpt.restore(jax.tree.map(jnp.zeros_like, expected))
    assert meta == {"step": 1}
    assert bits(tree) == bits(expected)


@pytest.mark.multidevice
def test_restore_onto_other_mesh_shapes(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run(
        [sys.executable, str(MULTIDEVICE_SCRIPT), str(tmp_path / "ckpt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert any("fsdp" in s and "tensor" in s for s in res["sharded_params"]), res
    for mesh in ("4x2", "1"):
        assert res[mesh] == {"exact": True, "placed": True, "meta": {"mesh": "2x4"}}, (mesh, res)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.multidevice
def test_two_processes_agree_on_the_fallback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
    port, directory = str(free_port()), str(tmp_path / "ckpt")
    procs = [
        subprocess.Popen(
            [sys.executable, str(MULTIPROCESS_SCRIPT), str(i), port, directory],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = []
    for p, (stdout, stderr) in zip(procs, outs, strict=True):
        assert p.returncode == 0, stderr[-4000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    for i, res in enumerate(results):
        assert res["process"] == i
        assert res["meta"] == {"step": 1} and res["exact"] and res["sharded"], res
        assert (res["latest_before"], res["latest_after"]) == (2, 1), res
        assert [m.split(" is skipped")[0] for m in res["skipped"]] == [
            f"checkpoint step 3 in {directory}",
            f"checkpoint step 2 in {directory}",
        ], res


def test_errors_and_nothing_is_overwritten(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        Checkpointer(missing).restore(small_tree(0))
    with pytest.raises(FileNotFoundError, match="nope"):
        Checkpointer(missing).metadata()
    assert not missing.exists()  # reading never creates the directory

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*empty"):
        Checkpointer(empty).restore(small_tree(0))
    assert Checkpointer(empty).latest_step() is None

    ckpt = Checkpointer(tmp_path / "ckpt")
    ckpt.save(1, small_tree(1), {"v": 1})
    with pytest.raises(FileExistsError, match="step 1 already exists"):
        ckpt.save(1, small_tree(9), {"v": 9})
    with pytest.raises(TypeError, match="JSON"):
        ckpt.save(2, small_tree(2), {"bad": object()})
    assert ckpt.all_steps() == [1]
    tree, meta = ckpt.restore(small_tree(0))
    assert meta == {"v": 1} and bits(tree) == bits(small_tree(1))
    with pytest.raises(FileNotFoundError, match="step 5 not found"):
        ckpt.restore(small_tree(0), step=5)
    with pytest.raises(ValueError, match="shapes differ"):
        ckpt.restore({"w": jnp.zeros((3, 99)), "n": jnp.int32(0)})
    with pytest.raises(ValueError, match="only in the target"):
        ckpt.restore(small_tree(0) | {"x": jnp.zeros(2)})
    assert ckpt.all_steps() == [1]  # a wrong target marks nothing as damaged

    ckpt.save(1, small_tree(9), {"v": 9}, force=True)  # explicit replacement
    tree, meta = ckpt.restore(small_tree(0))
    assert meta == {"v": 9} and bits(tree) == bits(small_tree(9))
    with pytest.raises(ValueError, match="best_mode"):
        Checkpointer(tmp_path, best_mode="best")


def test_async_save(tmp_path):
    with Checkpointer(tmp_path, async_save=True, max_to_keep=2) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, small_tree(step), {"step": step})
    assert Checkpointer(tmp_path).all_steps() == [2, 3]
    assert (tmp_path / "3" / MANIFEST).exists()
    tree, meta = Checkpointer(tmp_path).restore(small_tree(0))
    assert meta == {"step": 3} and bits(tree) == bits(small_tree(3))


def test_fingerprint_sees_moved_and_flipped_elements():
    x = jax.random.normal(jax.random.key(0), (8, 16))
    h = int(leaf_hash(x))
    swapped = x.at[0, 0].set(x[0, 1]).at[0, 1].set(x[0, 0])
    flipped = jax.lax.bitcast_convert_type(
        jax.lax.bitcast_convert_type(x, jnp.uint32).at[3, 7].add(1), jnp.float32
    )
    assert int(leaf_hash(swapped)) != h
    assert int(leaf_hash(flipped)) != h
    assert int(leaf_hash(x + 0.0)) == h
    assert int(leaf_hash(x.astype(jnp.bfloat16))) != int(leaf_hash(x.astype(jnp.bfloat16) + 1))


def test_relative_directory_works(tmp_path, monkeypatch):
    """Orbax needs absolute paths; a relative directory (as CLIs pass) must still work."""
    monkeypatch.chdir(tmp_path)
    with Checkpointer("rel/ckpts", max_to_keep=2) as ckpt:
        ckpt.save(1, {"x": jnp.arange(3.0)}, {"note": "relative"})
        ckpt.wait()
    tree, meta = Checkpointer("rel/ckpts").restore({"x": jnp.zeros(3)})
    assert meta["note"] == "relative" and np.array_equal(np.asarray(tree["x"]), np.arange(3.0))
