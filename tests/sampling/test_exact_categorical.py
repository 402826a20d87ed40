"""Exact draws at a tiny unmask probability: the two-stage rule (unmask with probability p,
then draw the token from the denoiser) keeps the denoiser's tail; a joint float32
Gumbel-argmax over "stay masked" + V tokens loses it.

Regime: V = 50,000 tokens; the denoiser puts 1/2 on one token and spreads 1/2 evenly over
the others (1.0e-5 each); the per-step unmask probability is p = 1e-4. Among unmasked
positions the true share of non-top tokens is 1/2.

Why the joint draw fails: ``jax.random.gumbel`` (float32, default mode) computes
-log(-log(u)) with u on a 2^-23 grid in [tiny, 1), so every Gumbel lies in
[-log(-log(tiny)), -log(-log(1 - 2^-23))] = [-4.47, 15.94], a range of 20.41. A tail token
must beat "stay masked" by log(1 - p) - log(p q_j) = 20.72 logits: it can never win.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

V = 50_000
P_UNMASK = 1e-4
Q_TAIL = 0.5 / (V - 1)
LOG_Q_TOP, LOG_Q_TAIL = math.log(0.5), math.log(Q_TAIL)
# Above every float32 Gumbel jax draws (-log(-log(1 - 2^-23)) = 15.942); checked below.
GUMBEL_BOUND = 15.95


def _binomial_se(p, n):
    return math.sqrt(p * (1 - p) / n)


def test_two_stage_unmask_frequency():
    n = 10_000_000
    u = jax.random.uniform(jax.random.key(0), (n,))
    freq = float(jnp.sum(u < P_UNMASK)) / n
    se = _binomial_se(P_UNMASK, n)
    print(f"two-stage unmask frequency {freq:.3e} (p = {P_UNMASK:.0e}, se {se:.1e})")
    assert abs(freq - P_UNMASK) < 5 * se


def test_two_stage_token_draw_keeps_the_tail():
    # Stage two, conditional on unmasking: the library's draw, jax.random.categorical on the
    # denoiser's logits (as in MaskedAncestral). A tail token wins when its Gumbel beats the
    # top token's by 10.8, well inside the float32 Gumbel range: nothing is truncated.
    n = 20_000  # 10^9 Gumbels, ~20 s on two CPU cores
    keys = jax.random.split(jax.random.key(1), n)
    log_q_V = jnp.full((V,), LOG_Q_TAIL, jnp.float32).at[0].set(LOG_Q_TOP)  # 0 is the top
    draw = jax.jit(
        lambda ks: jax.lax.map(lambda k: jax.random.categorical(k, log_q_V), ks, batch_size=500)
    )
    toks = np.asarray(draw(keys))
    share = float(np.mean(toks != 0))
    se = _binomial_se(0.5, n)
    print(f"two-stage non-top share {share:.4f} over {n} draws (truth 0.5, se {se:.4f})")
    assert abs(share - 0.5) < 5 * se
    assert len(np.unique(toks)) > 0.3 * n  # the tail really is spread over many tokens


def test_float32_gumbel_range_is_capped():
    # The library's Gumbel noise, measured: 2^26 draws. An exact Gumbel's maximum over n
    # draws is about log(n) = 18.0, and below 16 with probability exp(-n e^-16) ~ 1e-5.
    n, chunk = 2**26, 2**22
    draw = jax.jit(lambda k: jax.random.gumbel(k, (chunk,)))
    gs = [draw(k) for k in jax.random.split(jax.random.key(2), n // chunk)]
    g_max = max(float(jnp.max(g)) for g in gs)
    g_min = min(float(jnp.min(g)) for g in gs)
    cap = -math.log(-math.log1p(-(2.0**-23)))
    print(f"float32 Gumbel over {n} draws: max {g_max:.5f} (cap {cap:.5f}), min {g_min:.4f}")
    assert g_max < GUMBEL_BOUND


def test_joint_float32_gumbel_argmax_drops_the_tail():
    # Joint draw over [stay, top, tail...] with logits log(1 - p), log(p) + log(q_j). Real
    # float32 Gumbels for "stay" and the top token; the best tail token is given a Gumbel
    # above any float32 can return (its most favourable case), so the tail's share
    # measured here is an upper bound on the joint rule's. (Drawing all V + 1 Gumbels for
    # 10^7 positions would take hours on a CPU; only three scores can win.)
    n = 10_000_000
    k_stay, k_top = jax.random.split(jax.random.key(3))
    log_p = math.log(P_UNMASK)
    score_stay = jax.random.gumbel(k_stay, (n,)) + math.log1p(-P_UNMASK)
    score_top = jax.random.gumbel(k_top, (n,)) + (log_p + LOG_Q_TOP)
    score_tail = jnp.full((n,), GUMBEL_BOUND + log_p + LOG_Q_TAIL, jnp.float32)
    winner = np.asarray(jnp.argmax(jnp.stack([score_stay, score_top, score_tail]), axis=0))
    unmasked = int(np.sum(winner != 0))
    share = float(np.sum(winner == 2)) / unmasked
    se = _binomial_se(0.5, unmasked)
    print(
        f"joint float32 Gumbel-argmax: unmask frequency {unmasked / n:.3e} (truth {P_UNMASK:.0e}); "
        f"non-top share {share:.4f} of {unmasked} unmasked (truth 0.5, se {se:.4f}, "
        f"off by {(0.5 - share) / se:.1f} se)"
    )
    assert 0.5 - share > 5 * se
    # Half the unmasking mass (the tail's) is lost too: ~p/2 instead of p.
    assert abs(unmasked / n - P_UNMASK / 2) < 5 * _binomial_se(P_UNMASK / 2, n)
