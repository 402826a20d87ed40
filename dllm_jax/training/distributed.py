"""Multi-host start-up through JAX's own distributed runtime."""

from __future__ import annotations

import os

import jax


def maybe_initialize_distributed() -> bool:
    """Call ``jax.distributed.initialize`` when launched on several hosts.

    Explicit launch (any platform, CPU included): set ``DLLM_COORDINATOR`` (host:port),
    ``DLLM_NUM_PROCESSES`` and ``DLLM_PROCESS_ID``. On a TPU pod slice, set
    ``DLLM_DISTRIBUTED=1`` and JAX discovers the rest. Returns whether it initialised.
    """
    if "DLLM_COORDINATOR" in os.environ:
        # CPU collectives across processes (only used by CPU devices; harmless elsewhere).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=os.environ["DLLM_COORDINATOR"],
            num_processes=int(os.environ["DLLM_NUM_PROCESSES"]),
            process_id=int(os.environ["DLLM_PROCESS_ID"]),
        )
        return True
    if os.environ.get("DLLM_DISTRIBUTED") == "1":
        jax.distributed.initialize()
        return True
    return False
