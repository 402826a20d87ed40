"""Train state, optimizer, pure train/eval steps."""

from dllm_jax.training.optimizer import learning_rate, make_optimizer
from dllm_jax.training.state import TrainState, create_train_state, train_state_shardings
from dllm_jax.training.step import batch_loss, jit_train_step, make_eval_step, make_train_step

__all__ = [
    "TrainState",
    "batch_loss",
    "create_train_state",
    "jit_train_step",
    "learning_rate",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "train_state_shardings",
]
