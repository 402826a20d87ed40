"""Synthetic sequences with known likelihoods: a sparse Markov chain.

Used by the demo and by tests that check a trained model against the true NLL.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class MarkovChain:
    """A stationary Markov chain over ``num_tokens`` states with ``branching`` successors each.

    Each state moves to ``branching`` random successors with Dirichlet(``concentration``)
    probabilities, so its per-token entropy is well below log(num_tokens).
    """

    num_tokens: int = 8
    branching: int = 2
    concentration: float = 2.0
    seed: int = 0

    def __post_init__(self):
        if self.num_tokens < 2 or not 1 <= self.branching <= self.num_tokens:
            raise ValueError(
                f"MarkovChain needs num_tokens >= 2 and 1 <= branching <= num_tokens, got "
                f"num_tokens={self.num_tokens}, branching={self.branching}"
            )

    @property
    def transition(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        T = np.zeros((self.num_tokens, self.num_tokens))
        for a in range(self.num_tokens):
            succ = rng.choice(self.num_tokens, self.branching, replace=False)
            T[a, succ] = rng.dirichlet([self.concentration] * self.branching)
        # Mix in a tiny bit of every state so the chain is irreducible and aperiodic.
        T = 0.99 * T + 0.01 / self.num_tokens
        return T / T.sum(1, keepdims=True)

    @property
    def stationary(self) -> np.ndarray:
        w, v = np.linalg.eig(self.transition.T)
        pi = np.real(v[:, np.argmin(np.abs(w - 1.0))])
        return pi / pi.sum()

    def entropy_rate(self) -> float:
        """Nats per token in the long run: sum_a pi_a H(T[a])."""
        T = self.transition
        return float(-(self.stationary[:, None] * T * np.log(T)).sum())

    def nll_per_token(self, length: int) -> float:
        """Exact expected -log p(x) / length for sequences of ``length`` from the stationary start."""
        pi = self.stationary
        h0 = float(-(pi * np.log(pi)).sum())
        return (h0 + (length - 1) * self.entropy_rate()) / length

    def unigram_entropy(self) -> float:
        pi = self.stationary
        return float(-(pi * np.log(pi)).sum())

    def sample(self, num: int, length: int, seed: int = 0) -> np.ndarray:
        """``num`` sequences of ``length`` tokens, int32, deterministic in ``seed``."""
        rng = np.random.default_rng([self.seed, seed])
        T = self.transition
        cdf = np.cumsum(T, axis=1)
        out = np.empty((num, length), np.int32)
        out[:, 0] = rng.choice(self.num_tokens, num, p=self.stationary)
        for i in range(1, length):
            u = rng.random(num)[:, None]
            out[:, i] = np.minimum((u > cdf[out[:, i - 1]]).sum(1), self.num_tokens - 1)
        return out


def batches(data: np.ndarray, batch_size: int, start_step: int = 0):
    """Yield dict batches (tokens, loss_mask, index) cycling over ``data`` deterministically."""
    n = len(data)
    step = start_step
    while True:
        index = (step * batch_size + np.arange(batch_size)) % n
        tokens = data[index]
        yield {
            "tokens": tokens,
            "loss_mask": np.ones(tokens.shape, bool),
            "index": (step * batch_size + np.arange(batch_size)).astype(np.int32),
        }
        step += 1
