"""Hybrid noise (GIDD): a corrupted token is the mask or a uniform token, in a share set by t.

Forward marginal, per position (x_0 = a):

    q_t(z | a) = alpha(t) [z = a] + beta(t) pi_t(z),      beta = 1 - alpha,
    pi_t = (1 - u(t)) delta_mask + u(t) Uniform(V),

with u(t) the uniform share of the noise. ``p_uniform`` is its knob: ``share="constant"``
keeps u = p_u at every t (x_1 is a mix of masks and random tokens); ``share="decaying"``
has u(t) = p_u (1 - t), so x_1 is all-mask (sampling starts from masks, as in GIDD) and
random tokens appear in the middle of the trajectory, where the model learns to revise.
p_u = 0 is the masked process and p_u = 1 (constant) the uniform one, term for term.

The forward CTMC behind these marginals jumps from any state to z at the rate

    rho_t(z) = sigma(t) pi_t(z) + beta(t) pi_t'(z),      sigma = -alpha'/alpha,

(every state is reset at total rate sigma to a draw from rho / sigma; it needs rho >= 0,
checked at construction). Its negative ELBO (Campbell et al. 2022; Lou et al. 2024,
thm 3.6) is, per position with noisy state x,

    rho_t(x) sum_{y != x} r*_y phi(r_y / r*_y),        phi(v) = v - 1 - log v,

over the V tokens and the mask, r*_y = q_t(y | x_0) / q_t(x | x_0) and r_y the model's
ratio sum_a p(a | x_t) q_t(y | a) / q_t(x | a). With the exact posterior r_y is the true
ratio of marginals and the bound is tight: -log p(x). All quantities use ``beta(t)``
from t directly, never 1 - alpha, so the small-t range keeps its precision in float32.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax.diffusion.base import NoiseProcess, bregman

SHARES = ("constant", "decaying")


@dataclasses.dataclass(frozen=True)
class HybridProcess(NoiseProcess):
    mask_id: int = -1
    p_uniform: float = 0.1
    share: str = "constant"

    def __post_init__(self):
        if self.mask_id < self.num_tokens:
            raise ValueError(
                f"HybridProcess.mask_id={self.mask_id} must be a special id >= num_tokens={self.num_tokens}"
            )
        if not (isinstance(self.p_uniform, (int, float)) and 0.0 <= self.p_uniform <= 1.0):
            raise ValueError(f"HybridProcess.p_uniform must be in [0, 1], got {self.p_uniform!r}")
        if self.share not in SHARES:
            raise ValueError(f"HybridProcess.share must be one of {SHARES}, got {self.share!r}")
        t = np.linspace(1e-4, 1.0 - 1e-4, 999)
        rho_tok = np.asarray(self.rates(t)[0])
        if np.any(rho_tok < -1e-6):
            bad = float(t[np.argmin(rho_tok)])
            raise ValueError(
                f"share={self.share!r} with p_uniform={self.p_uniform} and {type(self.schedule).__name__} has a "
                f"negative forward rate at t={bad:.3f} (no CTMC has these marginals); use share='constant'"
            )

    @property
    def t_max(self) -> float:
        # With uniform noise the weight 1 / alpha diverges at t = 1 while the integrand vanishes.
        return 1.0 - self.t_min if self.p_uniform > 0 else 1.0

    # --- the mixture and the rates ---------------------------------------------------------

    def uniform_share(self, t):
        """u(t) and du/dt."""
        t = jnp.asarray(t)
        if self.share == "constant":
            return jnp.full_like(t, self.p_uniform), jnp.zeros_like(t)
        return self.p_uniform * (1.0 - t), jnp.full_like(t, -self.p_uniform)

    @property
    def prior_uniform_share(self) -> float:
        """u(1), a Python float: the share of uniform tokens in x_1 (the rest are masks)."""
        return float(self.p_uniform) if self.share == "constant" else 0.0

    def noise(self, t):
        """(beta pi_t(token), beta pi_t(mask)): the corrupted mass on one given token and on the mask."""
        beta = self.schedule.beta(t)
        u, _ = self.uniform_share(t)
        return beta * u / self.num_tokens, beta * (1.0 - u)

    def rates(self, t):
        """(rho_t(token), rho_t(mask)): the forward jump rates into one given token and into the mask."""
        a, beta = self.schedule.alpha(t), self.schedule.beta(t)
        sigma = -self.schedule.dalpha(t) / jnp.where(a > 0, a, 1.0)
        u, du = self.uniform_share(t)
        return sigma * u / self.num_tokens + beta * du / self.num_tokens, sigma * (1.0 - u) - beta * du

    # --- NoiseProcess ------------------------------------------------------------------------

    def likelihood(self, noisy_BL, t_B):
        a = self.schedule.alpha(t_B)[:, None, None]
        n_tok, n_mask = (x[:, None, None] for x in self.noise(t_B))
        is_mask = (noisy_BL == self.mask_id)[..., None]
        token = a * jax.nn.one_hot(noisy_BL, self.num_tokens) + n_tok
        return jnp.where(is_mask, jnp.broadcast_to(n_mask, token.shape), token)

    def corrupt(self, keys_B, tokens_BL, t_B):
        def one(key, tokens_L, t):
            k_drop, k_kind, k_tok = jax.random.split(key, 3)
            drop = jax.random.uniform(k_drop, tokens_L.shape) < self.schedule.beta(t)
            uniform = jax.random.uniform(k_kind, tokens_L.shape) < self.uniform_share(t)[0]
            noise = jnp.where(uniform, jax.random.randint(k_tok, tokens_L.shape, 0, self.num_tokens), self.mask_id)
            return jnp.where(drop, noise, tokens_L)

        return jax.vmap(one)(keys_B, tokens_BL, t_B)

    def prior(self, keys_B, length: int):
        u1 = self.prior_uniform_share

        def one(key):
            k_kind, k_tok = jax.random.split(key)
            uniform = jax.random.uniform(k_kind, (length,)) < u1
            return jnp.where(uniform, jax.random.randint(k_tok, (length,), 0, self.num_tokens), self.mask_id)

        return jax.vmap(one)(keys_B)

    def denoising_positions(self, noisy_BL):
        """Every position: an unmasked token may be uniform noise."""
        return jnp.ones(noisy_BL.shape, bool)

    def elbo_terms(self, logits_BLV, tokens_BL, noisy_BL, t_B):
        V = self.num_tokens
        logp = jax.nn.log_softmax(logits_BLV.astype(jnp.promote_types(logits_BLV.dtype, jnp.float32)), axis=-1)
        p = jnp.exp(logp)
        a = self.schedule.alpha(t_B)[:, None, None]
        n_tok, n_mask = (x[:, None, None] for x in self.noise(t_B))
        rho_tok, rho_mask = self.rates(t_B)
        is_mask_BL = noisy_BL == self.mask_id
        is_x = jax.nn.one_hot(noisy_BL, V, dtype=bool)  # all False at masks
        is_x0 = jax.nn.one_hot(tokens_BL, V)
        clean_BL1 = (noisy_BL == tokens_BL)[..., None]

        # x_t = a token x: ratios to every other token y and to the mask.
        safe_tok = jnp.where(n_tok > 0, n_tok, 1.0)
        p_x = jnp.sum(jnp.where(is_x, p, 0.0), -1, keepdims=True)
        not_x = -jnp.expm1(jnp.sum(jnp.where(is_x, logp, 0.0), -1, keepdims=True))  # 1 - p_x
        r_tok = not_x + p * a / safe_tok + p_x * n_tok / (a + n_tok)
        den_star = jnp.where(clean_BL1, a, 0.0) + n_tok  # q_t(x | x_0)
        safe_den = jnp.where(den_star > 0, den_star, 1.0)
        r_star_tok = (a * is_x0 + n_tok) / safe_den
        r_mask = n_mask * (not_x / safe_tok + p_x / (a + n_tok))
        r_star_mask = n_mask / safe_den
        from_token_BL = jnp.sum(jnp.where(is_x, 0.0, bregman(r_tok, r_star_tok)), -1) + bregman(r_mask, r_star_mask)[..., 0]

        # x_t = the mask: ratios to every token y.
        safe_mask = jnp.where(n_mask > 0, n_mask, 1.0)
        r_m = (a * p + n_tok) / safe_mask
        r_star_m = (a * is_x0 + n_tok) / safe_mask
        from_mask_BL = jnp.sum(bregman(r_m, r_star_m), -1)

        terms_BL = jnp.where(is_mask_BL, rho_mask[:, None] * from_mask_BL, rho_tok[:, None] * from_token_BL)
        # A state of zero forward rate contributes nothing (its ratios may be undefined).
        rho_BL = jnp.where(is_mask_BL, rho_mask[:, None], rho_tok[:, None])
        ok_B = self.schedule.alpha(t_B) > 0  # at alpha = 0 the terms vanish while sigma diverges
        return jnp.where(ok_B[:, None] & (rho_BL > 0), terms_BL, 0.0)

    # --- reverse steps --------------------------------------------------------------------

    def bridge_noise(self, t, s):
        """(lambda, (1 - lambda) pi_{t|s}(token), (1 - lambda) pi_{t|s}(mask)) of the transition
        q_{t|s}(z | y) = lambda [z = y] + (1 - lambda) pi_{t|s}(z), lambda = alpha_t / alpha_s."""
        lam = self.schedule.alpha(t) / self.schedule.alpha(s)
        tok_t, mask_t = self.noise(t)
        tok_s, mask_s = self.noise(s)
        return lam, jnp.maximum(tok_t - lam * tok_s, 0.0), jnp.maximum(mask_t - lam * mask_s, 0.0)

    def posterior(self, probs_BLV, noisy_BL, t, s):
        """p(x_s | x_t) per position from the model's clean marginals: (P(mask) (B, L, 1),
        token probabilities (B, L, V)), exact when ``probs_BLV`` is the true posterior."""
        V = self.num_tokens
        a_t, a_s = self.schedule.alpha(t), self.schedule.alpha(s)
        tok_t, mask_t = self.noise(t)
        tok_s, mask_s = self.noise(s)
        lam, b_tok, b_mask = self.bridge_noise(t, s)
        is_mask = (noisy_BL == self.mask_id)[..., None]
        is_x = jax.nn.one_hot(noisy_BL, V)
        q_t = jnp.where(is_mask, mask_t, a_t * is_x + tok_t)  # q_t(x_t | a)
        w = probs_BLV / jnp.where(q_t > 0, q_t, 1.0)
        W = jnp.sum(w, -1, keepdims=True)
        to_tok = a_s * w + tok_s * W  # sum_a p_a q_s(z | a) / q_t(x_t | a), z a token
        to_mask = mask_s * W
        # q_{t|s}(x_t | z)
        back_tok = jnp.where(is_mask, b_mask, lam * is_x + b_tok)
        back_mask = jnp.where(is_mask, lam + b_mask, b_tok)
        tok = back_tok * to_tok
        mask = back_mask * to_mask
        total = jnp.sum(tok, -1, keepdims=True) + mask
        return mask / total, tok / total
