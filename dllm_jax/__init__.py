"""dllm_jax: diffusion language models in JAX/Flax.

The public API is re-exported here; everything else is importable but not advertised.
"""

from dllm_jax.config import (
    MeshConfig,
    ModelConfig,
    NoiseConfig,
    TrainConfig,
    check_sequence_length,
    special_ids,
)
from dllm_jax.diffusion import (
    ARObjective,
    MaskedProcess,
    NoiseProcess,
    UniformProcess,
    make_objective,
    make_schedule,
    oracle_denoiser,
)
from dllm_jax.nn import Transformer, apply_model, count_params, create_model
from dllm_jax.sampling import ancestral, example_keys, run_sampler, sample
from dllm_jax.sharding import constrain, make_mesh
from dllm_jax.training import (
    TrainState,
    create_train_state,
    jit_train_step,
    make_eval_step,
    make_train_step,
)

__version__ = "0.1.0"

__all__ = [
    "ARObjective",
    "MaskedProcess",
    "MeshConfig",
    "ModelConfig",
    "NoiseConfig",
    "NoiseProcess",
    "TrainConfig",
    "TrainState",
    "Transformer",
    "UniformProcess",
    "ancestral",
    "apply_model",
    "check_sequence_length",
    "constrain",
    "count_params",
    "create_model",
    "create_train_state",
    "example_keys",
    "jit_train_step",
    "make_eval_step",
    "make_mesh",
    "make_objective",
    "make_schedule",
    "make_train_step",
    "oracle_denoiser",
    "run_sampler",
    "sample",
    "special_ids",
]
