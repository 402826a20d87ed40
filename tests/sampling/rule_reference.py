"""Exact K-step output laws of the step rules, by enumeration, in float64 pure Python/numpy.

Written from the rules' definitions, independently of ``dllm_jax``, for the tiny target of
``oracle_reference`` (V = 3, L = 4) with the exact denoiser. A state is ``(symbols, extra)``:
L symbols in {0..V-1, MASK} plus what a rule carries (a "needs a fresh evaluation" flag for
the cache, decode-time confidences for ReMDM-conf). A rule is a function
``(state, k, K) -> (nfe, [(next_state, prob), ...])``; ``propagate`` pushes the exact
distribution {state: prob} through the grid t_k = 1 - k / K and returns the law of the
final sequence over ``oracle_reference.sequences()`` and the exact expected NFE.

Rules that pick positions by a score compare float64 scores here and float32 ones in JAX;
``check_gap`` asserts that every comparison that decides a choice (top-n boundary, a
threshold) is at least ``TOL`` away from a tie at every reachable state, so the two
precisions cannot choose differently. Exact ties never arise (the target has full support).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections import defaultdict

import numpy as np
import oracle_reference as ref

V, L, MASK = ref.V, ref.L, ref.MASK_SYMBOL
P_S = ref.target_probs()
TOL = 1e-4
alpha = ref.log_linear_alpha


def check_gap(a: float, b: float, what: str) -> None:
    assert abs(a - b) > TOL, f"near-tie in {what}: {a!r} vs {b!r}; float32 could decide otherwise"


# --- marginals -------------------------------------------------------------------------


@functools.cache
def masked_marginals(symbols: tuple) -> np.ndarray:
    """p(x_0^l = v | x_0 agrees with ``symbols`` where unmasked): (L, V).

    The masked posterior does not depend on t; any alpha in (0, 1) gives it.
    """
    return ref.posterior_marginals("masked", np.array([symbols]), P_S, 0.5)[0]


@dataclasses.dataclass(frozen=True)
class Processing:
    """Temperature, then top-k, then top-p on the temperature-scaled probabilities."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __call__(self, p_V: np.ndarray) -> np.ndarray:
        q = np.where(p_V > 0, p_V, 0.0) ** (1.0 / self.temperature)
        q = q / q.sum()
        keep = q > 0
        desc = np.sort(q)[::-1]
        if 0 < self.top_k < V:
            kth = desc[self.top_k - 1]
            for value in q:
                if value != kth:
                    check_gap(value, kth, "top-k boundary")
            keep &= q >= kth
        if self.top_p < 1.0:
            before = np.cumsum(desc) - desc
            for mass in before:
                check_gap(mass, self.top_p, "top-p mass")
            keep &= q >= desc[before < self.top_p].min()
        q = np.where(keep, q, 0.0)
        return q / q.sum()


def processed(marginals_fn, processing: Processing):
    """Per-position processed marginals: symbols -> (L, V)."""

    @functools.cache
    def fn(symbols):
        return np.stack([processing(m) for m in marginals_fn(symbols)])

    return fn


def guided_marginals(prompt: dict, weight: float):
    """CFG: p_cond^(1 + w) / p_uncond^w per position, uncond with the prompt masked."""

    @functools.cache
    def fn(symbols):
        cond = masked_marginals(symbols)
        uncond = masked_marginals(tuple(MASK if i in prompt else x for i, x in enumerate(symbols)))
        mix = np.divide(
            cond ** (1 + weight), uncond**weight, out=np.zeros_like(cond), where=cond > 0
        )
        return mix / mix.sum(-1, keepdims=True)

    return fn


# --- the engine ------------------------------------------------------------------------


def times(k: int, num_steps: int):
    return 1.0 - k / num_steps, 1.0 - (k + 1) / num_steps


def independent(options_L):
    """Joint moves of positions that move independently: [(symbols, prob), ...]."""
    moves = []
    for combo in itertools.product(*options_L):
        prob = math.prod(q for _, q in combo)
        if prob > 0:
            moves.append((tuple(x for x, _ in combo), prob))
    return moves


def propagate(rule, init_symbols: tuple, num_steps: int, init_extra=None):
    """(law over the 81 sequences, exact expected NFE) after K steps of ``rule``."""
    dist, nfe = {(init_symbols, init_extra): 1.0}, 0.0
    for k in range(num_steps):
        new = defaultdict(float)
        for state, prob in dist.items():
            cost, moves = rule(state, k, num_steps)
            nfe += prob * cost
            for nxt, q in moves:
                new[nxt] += prob * q
        dist = new
    law = np.zeros(ref.NUM_SEQUENCES)
    for (symbols, _), prob in dist.items():
        assert MASK not in symbols, f"mask left at t = 0: {symbols} ({prob})"
        law[np.ravel_multi_index(symbols, (V,) * L)] += prob
    assert abs(law.sum() - 1.0) < 1e-12
    return law, nfe


def masked_positions(symbols):
    return [i for i, x in enumerate(symbols) if x == MASK]


def with_tokens(symbols, tokens: dict):
    return tuple(tokens.get(i, x) for i, x in enumerate(symbols))


def top_n(scores: dict, n: int) -> list:
    """The n best positions (higher score first, ties to the lower position)."""
    order = sorted(scores, key=lambda i: (-scores[i], i))
    if 0 < n < len(order):
        check_gap(scores[order[n - 1]], scores[order[n]], "top-n boundary")
    return order[:n]


def draw_at(symbols, positions, marg_LV, chosen_prob=1.0):
    """Moves drawing each of ``positions`` from its marginal, the rest unchanged."""
    moves = []
    for tokens in itertools.product(range(V), repeat=len(positions)):
        prob = chosen_prob * math.prod(
            marg_LV[i, v] for i, v in zip(positions, tokens, strict=True)
        )
        if prob > 0:
            moves.append(
                ((with_tokens(symbols, dict(zip(positions, tokens, strict=True))), None), prob)
            )
    return moves


# --- the rules -------------------------------------------------------------------------


def ancestral(marg_fn):
    """Masked ancestral step: a masked position unmasks w.p. (a_s - a_t)/(1 - a_t)."""

    def rule(state, k, num_steps):
        symbols, _ = state
        t, s = times(k, num_steps)
        unmask = (alpha(s) - alpha(t)) / (1.0 - alpha(t))
        marg = marg_fn(symbols)
        options = [
            [(x, 1.0)]
            if x != MASK
            else [(MASK, 1.0 - unmask)] + [(v, unmask * marg[i, v]) for v in range(V)]
            for i, x in enumerate(symbols)
        ]
        return 1, [((nxt, None), q) for nxt, q in independent(options)]

    return rule


def cached(marg_fn):
    """The ancestral law; a row pays an evaluation only if it changed since the last one
    and still has a masked position (a finished row needs no logits)."""
    inner = ancestral(marg_fn)

    def rule(state, k, num_steps):
        symbols, stale = state
        if MASK not in symbols:
            return 0, [(state, 1.0)]
        _, moves = inner((symbols, None), k, num_steps)
        return int(stale), [((nxt, nxt != symbols), q) for (nxt, _), q in moves]

    return rule


def score(order: str, marg_V: np.ndarray) -> float:
    if order == "max_prob":
        return float(marg_V.max())
    if order == "margin":
        top = np.sort(marg_V)[::-1]
        return float(top[0] - top[1])
    assert order == "entropy"
    return float(-sum(p * math.log(p) for p in marg_V if p > 0))  # lower entropy first: negate


def ordered(order: str, marg_fn, total: int = L):
    """Unmask n = masked - floor(M0 (K - k - 1) / K) positions chosen by ``order``."""

    def rule(state, k, num_steps):
        symbols, _ = state
        masked = masked_positions(symbols)
        count = max(len(masked) - (total * (num_steps - k - 1)) // num_steps, 0)
        if count == 0:
            return 0, [(state, 1.0)]
        marg = marg_fn(symbols)
        if order == "random":
            subsets = list(itertools.combinations(masked, count))
            return 1, [m for c in subsets for m in draw_at(symbols, c, marg, 1.0 / len(subsets))]
        if order == "left_to_right":  # the lowest masked positions, whatever the scores
            return 1, draw_at(symbols, tuple(masked[:count]), marg)
        if order != "confidence":
            sign = -1.0 if order == "entropy" else 1.0
            chosen = top_n({i: sign * score(order, marg[i]) for i in masked}, count)
            return 1, draw_at(symbols, chosen, marg)
        moves = []
        for tokens in itertools.product(range(V), repeat=len(masked)):
            conf = {i: marg[i, v] for i, v in zip(masked, tokens, strict=True)}
            prob = math.prod(conf.values())
            chosen = top_n(conf, count)
            drawn = dict(zip(masked, tokens, strict=True))
            moves.append(((with_tokens(symbols, {i: drawn[i] for i in chosen}), None), prob))
        return 1, moves

    return rule


def finishing_floor(num_masked: int, k: int, num_steps: int) -> int:
    return -(-num_masked // (num_steps - k))


def threshold(tau: float, marg_fn):
    """Fast-dLLM: draw everywhere, keep draws with prob > tau, at least the floor's best."""

    def rule(state, k, num_steps):
        symbols, _ = state
        masked = masked_positions(symbols)
        if not masked:
            return 0, [(state, 1.0)]
        marg = marg_fn(symbols)
        floor = finishing_floor(len(masked), k, num_steps)
        moves = []
        for tokens in itertools.product(range(V), repeat=len(masked)):
            conf = {i: marg[i, v] for i, v in zip(masked, tokens, strict=True)}
            for c in conf.values():
                check_gap(c, tau, "confidence threshold")
            chosen = set(top_n(conf, floor)) | {i for i, c in conf.items() if c > tau}
            drawn = dict(zip(masked, tokens, strict=True))
            moves.append(
                (
                    (with_tokens(symbols, {i: drawn[i] for i in chosen}), None),
                    math.prod(conf.values()),
                )
            )
        return 1, moves

    return rule


def entropy_bounded(gamma: float, marg_fn):
    """EB-sampler: the longest low-entropy prefix U with sum(H_U) - max(H_U) <= gamma (>= floor)."""

    def rule(state, k, num_steps):
        symbols, _ = state
        masked = masked_positions(symbols)
        if not masked:
            return 0, [(state, 1.0)]
        marg = marg_fn(symbols)
        neg_entropy = {i: -score("entropy", marg[i]) for i in masked}
        order = sorted(masked, key=lambda i: (-neg_entropy[i], i))
        entropies = [-neg_entropy[i] for i in order]
        # Ascending order: the max of a prefix is its last entry.
        excess = [sum(entropies[: j + 1]) - max(entropies[: j + 1]) for j in range(len(order))]
        for e in excess[1:]:
            check_gap(e, gamma, "entropy budget")
        count = max(sum(e <= gamma for e in excess), finishing_floor(len(masked), k, num_steps))
        return 1, draw_at(symbols, top_n(neg_entropy, min(count, len(masked))), marg)

    return rule


def remdm(schedule: str, eta: float, marg_fn):
    """ReMDM: per position, unmask w.p. (a_s - (1 - sigma) a_t)/(1 - a_t), remask w.p. sigma.

    State extra: per position the decode-time probability psi (None while masked or never
    decoded); only the ``conf`` schedule reads it, so the others keep None (fewer states).
    The number of distinct psi tuples grows quickly: exact enumeration of ``conf`` is
    practical up to K = 4 here.
    """

    def sigma_max(k, num_steps):
        a_t, a_s = (alpha(u) for u in times(k, num_steps))
        return min(1.0, (1.0 - a_s) / a_t) if a_t > 0 else 0.0

    def rule(state, k, num_steps):
        symbols, psi = state
        psi = psi or (None,) * L
        a_t, a_s = (alpha(u) for u in times(k, num_steps))
        sigma_max_k = sigma_max(k, num_steps)
        if schedule == "cap":
            sigma = [min(eta, sigma_max_k)] * L
        elif schedule == "rescale":
            sigma = [eta * sigma_max_k] * L
        else:
            weight = [math.exp(-p) if p is not None else 0.0 for p in psi]
            total = sum(weight)
            sigma = [w / total * sigma_max_k if total > 0 else 0.0 for w in weight]
        marg = marg_fn(symbols)
        # psi is read only by a later step that can remask: otherwise drop it (merge states).
        later = range(k + 1, num_steps)
        track = schedule == "conf" and any(sigma_max(j, num_steps) > 0 for j in later)
        options = []
        for i, x in enumerate(symbols):
            if x == MASK:
                unmask = (a_s - (1.0 - sigma[i]) * a_t) / (1.0 - a_t)
                opts = [((MASK, None), 1.0 - unmask)]
                opts += [
                    ((v, marg[i, v] if track else None), unmask * marg[i, v]) for v in range(V)
                ]
            else:
                opts = [((x, psi[i]), 1.0 - sigma[i]), ((MASK, None), sigma[i])]
            options.append(opts)
        moves = []
        for combo, prob in independent(options):
            nxt_symbols = tuple(x for x, _ in combo)
            nxt_psi = tuple(p for _, p in combo) if track else None
            moves.append(((nxt_symbols, nxt_psi), prob))
        return 1, moves

    return rule


# --- the uniform process: predictor-corrector by transition matrices -------------------


def pc_reference(num_steps: int, corrector_steps: int, processing: Processing = Processing()):
    """(law, expected NFE) of uniform ancestral predictor + renoise/predict correctors."""
    states_XL = ref.sequences(V)
    dist_X = np.full(len(states_XL), 1.0 / len(states_XL))
    for k in range(num_steps):
        t, s = times(k, num_steps)
        a_t, a_s = alpha(t), alpha(s)
        marg_XLV = ref.posterior_marginals("uniform", states_XL, P_S, a_t)
        marg_XLV = np.apply_along_axis(processing, -1, marg_XLV)
        predict = ref.transition_matrix(
            states_XL, ref.uniform_step_kernel(states_XL, marg_XLV, a_t, a_s)
        )
        # Renoise s -> t: keep w.p. a_t / a_s, else a uniform token; [x_s, l, x_t].
        renoise = ref.transition_matrix(
            states_XL, ref.forward_matrix("uniform", a_t / a_s)[states_XL]
        )
        dist_X = dist_X @ predict
        for _ in range(corrector_steps):
            dist_X = dist_X @ renoise @ predict
    return dist_X, float(num_steps * (1 + corrector_steps))
