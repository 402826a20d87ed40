"""dllm_jax: diffusion language models in JAX/Flax.

The public API is re-exported here; everything else is importable but not advertised.
"""

from dllm_jax.checkpoint import Checkpointer
from dllm_jax.config import (
    DataConfig,
    ExperimentConfig,
    LoopConfig,
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
from dllm_jax.evaluation import evaluate_likelihood
from dllm_jax.evaluation.context_use import context_use
from dllm_jax.nn import Transformer, apply_model, count_params, create_model
from dllm_jax.sampling import (
    Generation,
    Logits,
    ancestral,
    ar_generate,
    example_keys,
    generate,
    make_rule,
    resume,
    run_sampler,
    sample,
)
from dllm_jax.sharding import constrain, make_mesh
from dllm_jax.training import (
    TrainState,
    create_train_state,
    jit_train_step,
    make_eval_step,
    make_train_step,
)
from dllm_jax.training.loop import load_judge, load_run, train

__version__ = "0.1.0"

__all__ = [
    "ARObjective",
    "Checkpointer",
    "DataConfig",
    "ExperimentConfig",
    "Generation",
    "Logits",
    "LoopConfig",
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
    "ar_generate",
    "check_sequence_length",
    "constrain",
    "context_use",
    "count_params",
    "create_model",
    "create_train_state",
    "evaluate_likelihood",
    "example_keys",
    "generate",
    "jit_train_step",
    "load_judge",
    "load_run",
    "make_eval_step",
    "make_mesh",
    "make_objective",
    "make_rule",
    "make_schedule",
    "make_train_step",
    "oracle_denoiser",
    "resume",
    "run_sampler",
    "sample",
    "special_ids",
    "train",
]
