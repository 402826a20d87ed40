"""Mesh construction, the one logical-axis rules table, and ``constrain``.

Parameters carry logical axis names (``out_sharding`` metadata on each ``nnx.Param``);
activations go through ``constrain(x, *logical_axes)``. ``RULES`` maps logical names to
mesh axes once, for the whole library. A single device is a 1x1x1 mesh: there is one path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from dllm_jax.config import MeshConfig

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
RULES: dict[str, str | tuple[str, ...] | None] = {
    # activations
    "batch": ("data", "fsdp"),
    "length": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
    # parameters
    "layers": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "cond": None,
    "norm": None,
}


def make_mesh(config: MeshConfig = MeshConfig(), devices: Sequence | None = None) -> Mesh:
    """Build a (data, fsdp, tensor) mesh with Auto axes over ``devices`` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [config.data, config.fsdp, config.tensor]
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices cannot be split into mesh sizes {sizes}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs "
            f"{math.prod(sizes)} devices, but {len(devices)} are available"
        )
    return jax.make_mesh(
        tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices
    )


def logical_to_spec(
    axes: Sequence[str | None], shape: Sequence[int] | None = None, mesh: Mesh | None = None
) -> PartitionSpec:
    """Map logical axis names to a PartitionSpec through ``RULES``.

    A dimension whose size is not divisible by its mesh axes is replicated instead (tiny
    test models on big meshes). Two dimensions mapped to the same mesh axis is an error.
    """
    used: set[str] = set()
    spec = []
    for i, name in enumerate(axes):
        if name is None:
            spec.append(None)
            continue
        if name not in RULES:
            raise ValueError(f"unknown logical axis {name!r}; known: {sorted(RULES)}")
        target = RULES[name]
        mesh_axes = () if target is None else (target if isinstance(target, tuple) else (target,))
        if mesh is not None:
            mesh_axes = tuple(a for a in mesh_axes if mesh.shape[a] > 1)
            size = math.prod(mesh.shape[a] for a in mesh_axes)
            if shape is not None and mesh_axes and shape[i] % size:
                mesh_axes = ()
        clash = used.intersection(mesh_axes)
        if clash:
            raise ValueError(f"logical axes {tuple(axes)} map mesh axis {clash} twice")
        used.update(mesh_axes)
        spec.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    return PartitionSpec(*spec)


def logical_axes(variable: nnx.Variable) -> tuple[str | None, ...]:
    """The logical axis names stored on a variable (``out_sharding`` metadata)."""
    axes = variable.get_metadata().get("out_sharding")
    if axes is None:
        return (None,) * np.ndim(variable.get_value())
    return tuple(axes)


def logical_shardings(state, mesh: Mesh):
    """NamedShardings for every leaf of an ``nnx.State`` (abstract or concrete), from the
    logical axes its variables declare (the placement a model *should* have on ``mesh``)."""

    def one(v):
        if isinstance(v, nnx.Variable):
            shape = v.get_value().shape
            return v.replace(NamedSharding(mesh, logical_to_spec(logical_axes(v), shape, mesh)))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a (B, ...) batch array: B split over data and fsdp."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), None, mesh))


def constrain(x: jax.Array, *axes: str | None) -> jax.Array:
    """``with_sharding_constraint`` by logical names; a no-op when no mesh is set.

    Raises if the number of names does not match ``x.ndim`` (a silent mismatch would
    shard the wrong dimension).
    """
    if len(axes) != x.ndim:
        raise ValueError(f"constrain got {len(axes)} axis names {axes} for an array of shape {x.shape}")
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = logical_to_spec(axes, x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, spec)
