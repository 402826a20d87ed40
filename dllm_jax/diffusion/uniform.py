"""Uniform-state diffusion (SEDD-uniform, UDLM, DUO): tokens can be revised after written.

Forward: q_t(x_t | x_0) = alpha(t) [x_t = x_0] + (1 - alpha(t)) / V, i.e. a CTMC with rate
sigma(t) / V to every other token, sigma = -alpha'/alpha.

Negative ELBO (the CTMC / denoising-score-entropy bound of Campbell et al. 2022 and
Lou et al. 2024, thm 3.6, with no prior term since alpha(1) = 0): per position l and every
other token j != x_t^l,

    (sigma(t) / V) * r*_j * phi(r_j / r*_j),       phi(u) = u - 1 - log u >= 0,

where r*_j = q_t(j | x_0^l) / q_t(x_t^l | x_0^l) is the true ratio and r_j the model's,
r_j = sum_a p(a | x_t) q_t(j | a) / q_t(x_t^l | a) with p(a | x_t) the denoiser's marginal
posterior of the clean token. With the exact posterior, r_j is the true ratio of marginals
p_t(y)/p_t(x_t) and the bound is tight: integrated over t it equals -log p(x) exactly.
(UDLM's closed form plugs the mean into q_t's normaliser instead and is not tight.)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dllm_jax.diffusion.base import NoiseProcess, bregman


@dataclasses.dataclass(frozen=True)
class UniformProcess(NoiseProcess):
    @property
    def t_max(self) -> float:
        # The weight 1 / alpha diverges at t = 1 while the integrand vanishes there.
        return 1.0 - self.t_min

    def likelihood(self, noisy_BL, t_B):
        a = self.schedule.alpha(t_B)[:, None, None]
        return a * jax.nn.one_hot(noisy_BL, self.num_tokens) + self.schedule.beta(t_B)[:, None, None] / self.num_tokens

    def corrupt(self, keys_B, tokens_BL, t_B):
        def one(key, tokens_L, t):
            k_drop, k_tok = jax.random.split(key)
            drop = jax.random.uniform(k_drop, tokens_L.shape) >= self.schedule.alpha(t)
            noise = jax.random.randint(k_tok, tokens_L.shape, 0, self.num_tokens)
            return jnp.where(drop, noise, tokens_L)

        return jax.vmap(one)(keys_B, tokens_BL, t_B)

    def prior(self, keys_B, length: int):
        return jax.vmap(lambda k: jax.random.randint(k, (length,), 0, self.num_tokens))(keys_B)

    def denoising_positions(self, noisy_BL):
        """Every position: any token may have been resampled, and the model cannot tell which."""
        return jnp.ones(noisy_BL.shape, bool)

    def elbo_terms(self, logits_BLV, tokens_BL, noisy_BL, t_B):
        V = self.num_tokens
        a = self.schedule.alpha(t_B)[:, None, None]
        beta = self.schedule.beta(t_B)[:, None, None] / V  # from t: 1 - a rounds to 0 at small t
        logp = jax.nn.log_softmax(logits_BLV.astype(jnp.promote_types(logits_BLV.dtype, jnp.float32)), axis=-1)
        p = jnp.exp(logp)
        is_x = jax.nn.one_hot(noisy_BL, V, dtype=bool)
        logp_x = jnp.sum(jnp.where(is_x, logp, 0.0), -1, keepdims=True)
        p_x = jnp.exp(logp_x)
        # r_j = sum_{a != x} p_a (a [j = a] + beta) / beta + p_x beta / (a + beta), j != x
        r = -jnp.expm1(logp_x) + p_x * beta / (a + beta) + (a / beta) * p
        same = (noisy_BL == tokens_BL)[..., None]
        is_x0 = jax.nn.one_hot(tokens_BL, V)
        r_star = (a * is_x0 + beta) / (jnp.where(same, a, 0.0) + beta)
        terms = bregman(r, r_star)
        terms_BL = jnp.sum(jnp.where(is_x, 0.0, terms), axis=-1)
        alpha_B = self.schedule.alpha(t_B)
        # At alpha = 0 the weight is infinite but the terms vanish (as alpha^2): limit 0.
        # At t = 0 exactly x_t = x_0 surely and the integrand is bounded: dropped.
        ok_B = (alpha_B > 0) & (self.schedule.beta(t_B) > 0)
        sigma_over_v = -self.schedule.dalpha(t_B) / (jnp.where(ok_B, alpha_B, 1.0) * V)
        return jnp.where(ok_B[:, None], sigma_over_v[:, None] * terms_BL, 0.0)
