"""The denoising loop: ``jax.lax.scan`` over a precomputed time grid, K static.

The driver never sees a model: it receives ``denoise(tokens_BL, t_B) -> logits_BLV`` and a
step rule (a frozen dataclass, hashable, so it can be a static jit argument). Randomness
is per example and position: example keys come from (seed, example index); the key of a
position at step k is ``fold_in(fold_in(example_key, k), position)`` (``draws.position_keys``),
so an example's sample depends neither on its batch-mates nor on the canvas it sits in.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax.rng import example_keys  # noqa: F401 (re-exported)
from dllm_jax.sampling.draws import position_keys, prior_keys, process_prior

Denoise = Callable[[jax.Array, jax.Array], jax.Array]


class StepRule(abc.ABC):
    """One denoising update from time t to s < t.

    Subclasses are frozen dataclasses (hashable: a static jit argument). ``step`` gets one
    key per position (``keys_BL``, see ``draws``) and returns the new tokens, the network
    evaluations spent per example (B,), and the rule's carried state. Positions the caller
    fixed (prompts, infill, padding) are restored by the driver after every step.
    """

    def init_state(self, tokens_BL):
        """State carried through the scan (e.g. a cache); none by default."""
        return ()

    def check_denoiser(self, denoise) -> None:
        """Raise if this rule is invalid for ``denoise`` (e.g. a cache needing t-independence)."""
        del denoise  # every denoiser is valid unless a rule says otherwise

    def finished(self, tokens_BL):
        """Rows (bool, B) on which every further step is the identity at no NFE, or None
        if the rule never says so. When every row is finished the driver stops early (a
        ``while_loop``): the same tokens and NFE as running all K steps, less wall time."""
        del tokens_BL
        return None

    def prior(self, keys_BL):
        """The fully corrupted starting tokens, (B, L), from one key per position: the
        prior of the rule's ``process`` (``draws.process_prior``) unless a rule says otherwise."""
        return process_prior(self.process, keys_BL)

    @abc.abstractmethod
    def step(self, denoise: Denoise, tokens_BL, t, s, keys_BL, state):
        """Returns (tokens_BL, nfe_B, state)."""


def time_grid(num_steps: int):
    """K + 1 times from 1 down to 0, evenly spaced."""
    return jnp.linspace(1.0, 0.0, num_steps + 1)


def check_num_steps(num_steps) -> int:
    """``num_steps`` as a Python int (it is static: one compile per value); numpy ints are fine."""
    if isinstance(num_steps, (bool, np.bool_)) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    return int(num_steps)


def run_sampler(
    denoise: Denoise, rule: StepRule, init_BL, keys_B, num_steps: int, fixed_BL=None, positions_L=None
):
    """Run K = ``num_steps`` steps of ``rule`` from ``init_BL``.

    Args:
      denoise: (tokens_BL, t_B) -> logits_BLV.
      rule: the step rule.
      init_BL: the starting canvas (prior draws, with any fixed tokens already written).
      keys_B: one key per example (``example_keys``).
      num_steps: K, static.
      fixed_BL: optional bool mask of positions that are never changed (prompts, infill).
      positions_L: absolute positions of the canvas columns (default 0..L-1), for keys.

    Returns:
      (tokens_BL, nfe_B): final tokens and network evaluations spent per example, times
      ``denoise.passes`` (e.g. 2 for classifier-free guidance) when the denoiser has it.
    """
    num_steps = check_num_steps(num_steps)
    rule.check_denoiser(denoise)
    grid = time_grid(num_steps)
    batch, length = init_BL.shape
    if positions_L is None:
        positions_L = jnp.arange(length)

    def body(carry, k):
        tokens_BL, nfe_B, state = carry
        keys_BL = position_keys(keys_B, k, positions_L)
        new_BL, used_B, state = rule.step(denoise, tokens_BL, grid[k], grid[k + 1], keys_BL, state)
        if fixed_BL is not None:
            new_BL = jnp.where(fixed_BL, init_BL, new_BL)
        return (new_BL, nfe_B + used_B, state), None

    carry = (init_BL, jnp.zeros((batch,), jnp.int32), rule.init_state(init_BL))
    if rule.finished(init_BL) is None:
        (tokens_BL, nfe_B, _), _ = jax.lax.scan(body, carry, jnp.arange(num_steps))
    else:
        def running(loop):
            k, (tokens_BL, _, _) = loop
            return (k < num_steps) & ~jnp.all(rule.finished(tokens_BL))

        def loop_body(loop):
            k, carry = loop
            return k + 1, body(carry, k)[0]

        _, (tokens_BL, nfe_B, _) = jax.lax.while_loop(running, loop_body, (jnp.int32(0), carry))
    return tokens_BL, nfe_B * getattr(denoise, "passes", 1)


def sample(denoise: Denoise, rule: StepRule, keys_B, length: int, num_steps: int, prompt_BL=None, fixed_BL=None):
    """Draw samples: start from the rule's prior, keep ``fixed_BL`` positions of ``prompt_BL``."""
    init_BL = rule.prior(prior_keys(keys_B, jnp.arange(length)))
    if prompt_BL is not None:
        if fixed_BL is None:
            raise ValueError("prompt_BL needs fixed_BL, the mask of positions to keep")
        init_BL = jnp.where(fixed_BL, prompt_BL, init_BL)
    return run_sampler(denoise, rule, init_BL, keys_B, num_steps, fixed_BL)
