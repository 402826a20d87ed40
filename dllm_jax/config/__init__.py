"""Frozen, typed, eagerly validated configs.

Every config is a frozen dataclass; ``__post_init__`` raises ``ValueError`` naming the bad
field, its value and what was expected. Experiments are functions returning configs; CLI
overrides are parsed only in ``experiments/``.

``model`` holds the backbone, ``noise`` the objective, ``run`` everything else a training
run needs (mesh, optimiser, data, host loop) and the ``ExperimentConfig`` that joins them.
"""

from dllm_jax.config.model import (
    ATTENTION_KINDS,
    DTYPES,
    NUM_SPECIAL_TOKENS,
    ModelConfig,
    SpecialIds,
    check_sequence_length,
    special_ids,
)
from dllm_jax.config.noise import (
    PROCESS_KINDS,
    SCHEDULE_KINDS,
    TIME_DISTRIBUTIONS,
    WEIGHTINGS,
    NoiseConfig,
)
from dllm_jax.config.run import (
    DataConfig,
    ExperimentConfig,
    LoopConfig,
    MeshConfig,
    TrainConfig,
    check_block_training,
)
from dllm_jax.validate import check_tokens

__all__ = [
    "ATTENTION_KINDS", "DTYPES", "NUM_SPECIAL_TOKENS", "PROCESS_KINDS", "SCHEDULE_KINDS",
    "TIME_DISTRIBUTIONS", "WEIGHTINGS", "DataConfig", "ExperimentConfig", "LoopConfig",
    "MeshConfig", "ModelConfig", "NoiseConfig", "SpecialIds", "TrainConfig",
    "check_block_training", "check_sequence_length", "check_tokens", "special_ids",
]
