"""Agreement across JAX processes for checkpoint restores (a no-op with one process)."""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils


def all_processes(ok: bool) -> bool:
    """True iff ``ok`` on every JAX process, so that all of them restore the same step."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def primary_steps(steps: list[int]) -> list[int]:
    """The primary process's list of steps, on every process."""
    if jax.process_count() == 1:
        return steps
    n = int(multihost_utils.broadcast_one_to_all(np.int32(len(steps))))
    mine = np.asarray(steps if len(steps) == n else [0] * n, np.int32)
    return [int(s) for s in multihost_utils.broadcast_one_to_all(mine)]
