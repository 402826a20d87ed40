"""Training-time samplers: stratified uniforms mapped to times by an inverse CDF."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri


@dataclasses.dataclass(frozen=True)
class TimeSampler:
    """Maps stratified uniforms u in [0, 1) to training times in [low, high].

    ``uniform``: t = low + (high - low) u. ``logit_normal``: the logit-normal(mean, std)
    truncated to [low, high], t = F^-1(F(low) + u (F(high) - F(low))). Monotone in u, so
    stratified uniforms give stratified times.
    """

    distribution: str = "uniform"
    low: float = 0.0
    high: float = 1.0
    logit_mean: float = 0.0
    logit_std: float = 1.0

    def __post_init__(self):
        if self.distribution not in ("uniform", "logit_normal"):
            raise ValueError(
                f"TimeSampler.distribution must be 'uniform' or 'logit_normal', got {self.distribution!r}"
            )
        if not 0 <= self.low < self.high <= 1:
            raise ValueError(f"TimeSampler needs 0 <= low < high <= 1, got low={self.low}, high={self.high}")

    def _cdf(self, t: float) -> float:
        if t <= 0:
            return 0.0
        if t >= 1:
            return 1.0
        z = (math.log(t) - math.log1p(-t) - self.logit_mean) / self.logit_std
        return 0.5 * math.erfc(-z / math.sqrt(2.0))

    def __call__(self, u_B):
        if self.distribution == "uniform":
            return self.low + (self.high - self.low) * u_B
        lo, hi = self._cdf(self.low), self._cdf(self.high)
        p_B = jnp.clip(lo + (hi - lo) * u_B, 1e-12, 1.0 - 1e-7)
        t_B = jax.nn.sigmoid(self.logit_mean + self.logit_std * ndtri(p_B))
        return jnp.clip(t_B, self.low, self.high)

    def density(self, t_B):
        """The sampler's probability density at t (for tests and importance weights)."""
        inside = (t_B >= self.low) & (t_B <= self.high)
        if self.distribution == "uniform":
            return jnp.where(inside, 1.0 / (self.high - self.low), 0.0)
        z = (jnp.log(t_B) - jnp.log1p(-t_B) - self.logit_mean) / self.logit_std
        pdf = jnp.exp(-0.5 * z * z) / (math.sqrt(2 * math.pi) * self.logit_std * t_B * (1 - t_B))
        mass = self._cdf(self.high) - self._cdf(self.low)
        return jnp.where(inside, pdf / mass, 0.0)
