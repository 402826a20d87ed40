"""Noise schedules: endpoints, monotonicity, analytic derivative, float32 precision."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax.diffusion import Cosine, LogLinear, Polynomial, make_schedule

SCHEDULES = {
    "loglinear": LogLinear(),
    "cosine": Cosine(),
    "polynomial-0.5": Polynomial(0.5),
    "polynomial-2": Polynomial(2.0),
    "polynomial-3": Polynomial(3.0),
}


@pytest.fixture(params=sorted(SCHEDULES))
def schedule(request):
    return SCHEDULES[request.param]


def test_endpoints(schedule):
    alpha = schedule.alpha(jnp.array([0.0, 1.0], jnp.float32))
    assert alpha.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(alpha), [1.0, 0.0], rtol=0, atol=1e-7)


def test_alpha_decreases(schedule):
    alpha = np.asarray(schedule.alpha(jnp.linspace(0.0, 1.0, 1001)))
    # Non-increasing everywhere (t**3 near 0 is below float32's resolution of 1) ...
    assert np.all(np.diff(alpha) <= 0), np.diff(alpha).max()
    assert np.all((alpha >= 0) & (alpha <= 1))
    # ... and strictly decreasing where float32 can tell.
    coarse = np.asarray(schedule.alpha(jnp.linspace(0.05, 1.0, 96)))
    assert np.all(np.diff(coarse) < 0), np.diff(coarse).max()


def test_dalpha_is_the_derivative(schedule):
    t = jnp.linspace(0.01, 0.99, 99)
    autodiff = jax.vmap(jax.grad(schedule.alpha))(t)
    np.testing.assert_allclose(
        np.asarray(schedule.dalpha(t)), np.asarray(autodiff), rtol=1e-5, atol=1e-6
    )
    assert np.all(np.asarray(schedule.dalpha(t)) < 0)


def test_cosine_keeps_relative_precision_near_one():
    # 1 - cos(pi/2 (1 - t)) in float32 rounds to 0 here; the sin^2 form does not.
    t32 = np.float32(1.0 - 1e-4)
    alpha32 = float(Cosine().alpha(jnp.float32(t32)))
    u = 1.0 - float(t32)  # the exact float64 value of 1 - t for the float32 t
    alpha64 = 2.0 * math.sin(0.25 * math.pi * u) ** 2  # = 1 - cos(pi u / 2), stably
    assert alpha32 > 0
    assert abs(alpha32 - alpha64) < 1e-3 * alpha64, (alpha32, alpha64)


def test_cosine_dalpha_near_one_matches_float64():
    t32 = np.float32(1.0 - 1e-4)
    got = float(Cosine().dalpha(jnp.float32(t32)))
    want = -0.5 * math.pi * math.sin(0.5 * math.pi * (1.0 - float(t32)))
    assert got < 0 and abs(got - want) < 1e-3 * abs(want), (got, want)


def test_make_schedule_by_name():
    assert make_schedule("loglinear") == LogLinear()
    assert make_schedule("cosine") == Cosine()
    assert make_schedule("polynomial", 3.0) == Polynomial(3.0)
    with pytest.raises(ValueError, match=r"Polynomial\.exponent must be > 0, got -1"):
        make_schedule("polynomial", -1.0)
