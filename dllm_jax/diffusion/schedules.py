"""Noise schedules: alpha(t), the probability that a token is still clean at time t.

Every schedule has alpha(0) = 1 and alpha(1) = 0 exactly, so the ELBO has no prior or
reconstruction endpoint terms. Each is a frozen dataclass with ``alpha`` and its
derivative ``dalpha`` (analytic, not autodiff, so the ELBO weight is exact).
"""

from __future__ import annotations

import abc
import dataclasses
import math

import jax.numpy as jnp


class Schedule(abc.ABC):
    @abc.abstractmethod
    def alpha(self, t):
        """Probability that a token is still clean at time t in [0, 1]."""

    @abc.abstractmethod
    def dalpha(self, t):
        """d alpha / dt (<= 0)."""

    def beta(self, t):
        """1 - alpha(t), the probability that a token is corrupted, computed from t directly
        so that it keeps its relative precision at small t (1 - alpha rounds to 0 in
        float32 below t ~ 3e-8 for the log-linear schedule)."""
        return 1.0 - self.alpha(t)


@dataclasses.dataclass(frozen=True)
class LogLinear(Schedule):
    """alpha(t) = 1 - t: total noise sigma(t) = -log(1 - t) (MDLM's log-linear schedule)."""

    def alpha(self, t):
        return 1.0 - t

    def dalpha(self, t):
        return -jnp.ones_like(t)

    def beta(self, t):
        return t


@dataclasses.dataclass(frozen=True)
class Cosine(Schedule):
    """alpha(t) = 1 - cos(pi/2 (1 - t)) (MD4's cosine schedule).

    Computed as 2 sin^2(pi/4 (1 - t)), which keeps full relative precision near t = 1.
    """

    def alpha(self, t):
        return 2.0 * jnp.sin(0.25 * math.pi * (1.0 - t)) ** 2

    def dalpha(self, t):
        return -0.5 * math.pi * jnp.sin(0.5 * math.pi * (1.0 - t))

    def beta(self, t):
        return jnp.sin(0.5 * math.pi * t)  # = cos(pi/2 (1 - t))


@dataclasses.dataclass(frozen=True)
class Polynomial(Schedule):
    """alpha(t) = 1 - t**exponent (MD4's polynomial schedule)."""

    exponent: float = 2.0

    def __post_init__(self):
        if not self.exponent > 0:
            raise ValueError(f"Polynomial.exponent must be > 0, got {self.exponent}")

    def alpha(self, t):
        return 1.0 - t**self.exponent

    def dalpha(self, t):
        return -self.exponent * t ** (self.exponent - 1.0)

    def beta(self, t):
        return t**self.exponent


def make_schedule(kind: str, exponent: float = 1.0) -> Schedule:
    """A schedule by name: ``loglinear``, ``cosine`` or ``polynomial``."""
    makers = {
        "loglinear": LogLinear,
        "cosine": Cosine,
        "polynomial": lambda: Polynomial(exponent),
    }
    if kind not in makers:
        raise ValueError(f"unknown schedule {kind!r}; expected one of {sorted(makers)}")
    return makers[kind]()
