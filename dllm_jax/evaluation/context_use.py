"""How much context a model uses: NLL per corrupted token as a function of the noise level t.

For a diffusion model, corrupt the validation data at a fixed t (every row at the same t),
and average -log p_theta(x_0^l | x_t) over the *corrupted* positions (x_t^l != x_0^l: the
masked ones for the masked process, the resampled-to-another-token ones for the uniform
process). At t -> 1 almost nothing is visible and a model can do no better than the
position-wise marginal (about the unigram entropy); at small t nearly the whole sequence is
visible, so a model that uses its context is far below it. A curve flat at the unigram
entropy says the run has learnt no context at all — the plot that tells at a glance whether
a diffusion run is learning. The AR model's exact NLL (it sees every earlier token) is the
reference line, and the data's unigram entropy the ceiling.

The same noise uniforms are used at every t (common random numbers: the corrupted sets are
nested in t), so the curve is smooth and differences between checkpoints are not noise.
The 95% interval is the delta-method interval of a ratio estimator over rows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dllm_jax.diffusion.autoregressive import ARObjective, shift_right
from dllm_jax.diffusion.base import NoiseProcess, Objective, token_nll
from dllm_jax.diffusion.block import BlockDiffusion
from dllm_jax.progress import Progress

DEFAULT_TIMES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.99)
Z95 = 1.96


@dataclasses.dataclass(frozen=True)
class ContextUse:
    """NLL per corrupted token at each t (nats), with 95% intervals.

    Attributes:
      times: the noise levels t.
      nll: mean -log p(x_0 | x_t) over corrupted tokens at each t. For an AR objective the
        exact NLL per token, the same at every t (its reference line).
      ci95: half-widths of the 95% intervals (delta method over rows).
      corrupted: number of corrupted tokens scored at each t.
      unigram_entropy: entropy (nats) of the token histogram of the evaluated data.
      exact: True for an AR objective.
    """

    times: tuple[float, ...]
    nll: tuple[float, ...]
    ci95: tuple[float, ...]
    corrupted: tuple[int, ...]
    unigram_entropy: float
    exact: bool = False

    def at(self, t: float) -> float:
        """The NLL at grid time ``t`` (which must be on the grid)."""
        for time, value in zip(self.times, self.nll, strict=True):
            if math.isclose(time, t, rel_tol=0, abs_tol=1e-9):
                return value
        raise ValueError(f"t={t} is not on the diagnostic's grid {self.times}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def metrics(self) -> dict[str, float]:
        """Flat ``{"nll_t0.10": ...}`` entries for the metrics log (JSONL / TensorBoard)."""
        out = {f"nll_t{t:.2f}": v for t, v in zip(self.times, self.nll, strict=True)}
        out["unigram_entropy"] = self.unigram_entropy
        return out

    def table(self) -> str:
        """A two-line text table: t and the NLL (± CI) at each t."""
        head = "  t      " + "".join(f"{t:>13.2f}" for t in self.times)
        body = "  nats   " + "".join(f"{v:>7.3f}±{c:<5.3f}" for v, c in zip(self.nll, self.ci95, strict=True))
        ref = f"  (unigram entropy of the data {self.unigram_entropy:.3f} nats)"
        return "\n".join([head, body, ref])


def row_sums(objective: Objective, apply_fn, keys_B, tokens_BL, loss_mask_BL, t):
    """(NLL summed over each row's corrupted tokens, their count): two (B,) arrays.

    ``apply_fn(tokens_BL, t_B) -> logits_BLV``. For an AR objective, every loss token of
    the row (the exact NLL, independent of ``t``). For a block objective, the whole
    sequence is corrupted at t and each block denoised given the clean blocks before it
    (``apply_fn(noisy_BL, t_B, clean_BL=tokens_BL)``, the two-stream forward).
    """
    B = tokens_BL.shape[0]
    if isinstance(objective, ARObjective):
        logits_BLV = apply_fn(shift_right(tokens_BL, objective.bos_id), None)
        scored_BL = loss_mask_BL
    elif isinstance(objective, BlockDiffusion):  # every block at t, each given the clean past
        t_B = jnp.full((B,), t, jnp.float32)
        process = objective.process
        noisy_BL = jnp.where(loss_mask_BL, process.corrupt(keys_B, tokens_BL, t_B), tokens_BL)
        logits_BLV = apply_fn(noisy_BL, t_B, clean_BL=tokens_BL)
        scored_BL = loss_mask_BL & (noisy_BL != tokens_BL)
    elif isinstance(objective, NoiseProcess):
        t_B = jnp.full((B,), t, jnp.float32)
        noisy_BL = jnp.where(loss_mask_BL, objective.corrupt(keys_B, tokens_BL, t_B), tokens_BL)
        logits_BLV = apply_fn(noisy_BL, t_B)
        scored_BL = loss_mask_BL & (noisy_BL != tokens_BL)
    else:
        raise TypeError(f"context use needs a NoiseProcess or ARObjective, got {type(objective).__name__}")
    nll_BL = token_nll(logits_BLV, tokens_BL, objective.num_tokens)
    return jnp.sum(jnp.where(scored_BL, nll_BL, 0.0), -1), jnp.sum(scored_BL, -1)


def model_apply(graphdef):
    """``(params, tokens_BL, t_B) -> logits_BLV`` for an NNX model given by ``graphdef``."""
    return lambda params, tokens_BL, t_B, **kw: nnx.merge(graphdef, params, copy=True)(tokens_BL, t_B, **kw)


def make_context_fn(objective: Objective, apply, mesh=None, seed: int = 0):
    """``(params, batch, t) -> (nll_sum_B, count_B)``, jitted, with fixed per-example noise.

    Args:
      objective: the process (or AR objective) whose corruption is applied.
      apply: ``(params, tokens_BL, t_B) -> logits_BLV``: ``model_apply(graphdef)`` for a
        model, or any denoiser (e.g. an exact oracle, ignoring ``params``).
      mesh: run under this mesh (None: no mesh context).
      seed: example i's noise key is ``fold_in(key(seed), index_i)``.
    """
    key = jax.random.key(seed)

    def fn(params, batch, t):
        keys_B = jax.vmap(lambda i: jax.random.fold_in(key, i))(batch["index"].astype(jnp.uint32))
        denoise = lambda x, tt, **kw: apply(params, x, tt, **kw)
        return row_sums(objective, denoise, keys_B, batch["tokens"], batch["loss_mask"], t)

    jitted = jax.jit(fn)

    def run(params, batch, t):
        if mesh is None:
            return jitted(params, batch, t)
        with jax.set_mesh(mesh):
            return jitted(params, batch, t)

    return run


def ratio_interval(sums_R: np.ndarray, counts_R: np.ndarray) -> tuple[float, float]:
    """(sum y / sum c, 95% delta-method half-width) of a ratio estimator over rows."""
    sums_R, counts_R = np.asarray(sums_R, np.float64), np.asarray(counts_R, np.float64)
    total = counts_R.sum()
    if total <= 0:
        return math.nan, math.nan
    ratio = sums_R.sum() / total
    n = len(sums_R)
    if n < 2:
        return float(ratio), math.nan
    resid = sums_R - ratio * counts_R
    var = n / (n - 1) * np.sum(resid**2) / total**2
    return float(ratio), float(Z95 * math.sqrt(var))


def histogram_entropy(batches: Iterable[dict], num_tokens: int) -> float:
    """Entropy (nats) of the pooled histogram of ordinary tokens at loss positions."""
    counts = np.zeros(num_tokens, np.int64)
    for batch in batches:
        tokens = np.asarray(batch["tokens"])[np.asarray(batch["loss_mask"])]
        tokens = tokens[tokens < num_tokens]
        counts += np.bincount(tokens, minlength=num_tokens)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def context_use(
    objective: Objective,
    graphdef,
    params,
    batches: Sequence[dict],
    mesh,
    *,
    times: Sequence[float] = DEFAULT_TIMES,
    seed: int = 0,
    context_fn=None,
    log=None,
) -> ContextUse:
    """The NLL per corrupted token of a model at each of ``times``, over ``batches``.

    Args:
      objective: the model's process (or the AR objective: the exact NLL at every t).
      graphdef, params: the model (``graphdef`` is unused when ``context_fn`` is given).
      batches: validation batches (``tokens``, ``loss_mask``, ``index``), read once per t.
      mesh: the device mesh.
      times: noise levels in (0, 1].
      seed: seeds the per-example corruption noise (the same noise at every t).
      context_fn: a prebuilt ``make_context_fn`` (lets a loop compile once).
      log: e.g. ``print``: progress lines while it runs (None: silent).

    Raises:
      ValueError: an empty or out-of-range time grid, or no batches.
    """
    times = tuple(float(t) for t in times)
    if not times or any(not 0 < t <= 1 for t in times):
        raise ValueError(f"context-use times must be a non-empty list in (0, 1], got {times}")
    batches = list(batches)
    if not batches:
        raise ValueError("no batches to evaluate")
    fn = context_fn or make_context_fn(objective, model_apply(graphdef), mesh, seed)
    exact = isinstance(objective, ARObjective)
    nll, ci, counts = [], [], []
    cached = None
    progress = Progress("context-use noise levels", len(times), log)
    for t in times:
        if exact and cached is not None:
            value, half, count = cached
        else:
            parts = [fn(params, batch, t) for batch in batches]
            sums_R = np.concatenate([np.asarray(s) for s, _ in parts])
            counts_R = np.concatenate([np.asarray(c) for _, c in parts])
            value, half = ratio_interval(sums_R, counts_R)
            count = int(counts_R.sum())
            cached = (value, half, count)
        nll.append(value)
        ci.append(half)
        counts.append(count)
        progress.update()
    return ContextUse(times, tuple(nll), tuple(ci), tuple(counts),
                      histogram_entropy(batches, objective.num_tokens), exact)


def plot_context_use(curves: dict[str, ContextUse], path, *, reference: ContextUse | None = None,
                     title: str = "context use") -> None:
    """One curve per entry (e.g. per checkpoint), the AR reference and the unigram ceiling.

    Needs matplotlib (the ``notebooks`` / ``test`` extras).
    """
    import matplotlib  # optional dependency, imported only to plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, use in curves.items():
        ax.errorbar(use.times, use.nll, yerr=use.ci95, marker="o", ms=3, capsize=2, label=label)
    any_use = next(iter(curves.values()), reference)
    if reference is not None:
        ax.axhline(reference.nll[0], color="k", ls="--", label="AR exact NLL")
    if any_use is not None:
        ax.axhline(any_use.unigram_entropy, color="grey", ls=":", label="unigram entropy of the data")
    ax.set(xlabel="t (share of tokens corrupted)", ylabel="NLL per corrupted token (nats)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
