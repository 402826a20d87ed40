"""The revision meter: what a corrector changed in each sample, and whether each change
helped by a judge's measure.

A change is a committed token that the revision replaced, at a position the judge scores
in the sample before it (up to and including its first eos; ``quality.scored_mask``);
changes past that are counted apart (``unscored_B``), since no judge can rate them. Each
change is scored alone: the sample before the revision with only that token changed, under
the causal judge (``quality.judge_nll``). A *correction* lowers the judge's NLL of the
sequence, a change that raises it *worsens* the sample (ties count as neither). The whole
revision's effect is the judge NLL after minus before.

``revision_records`` puts the meter beside gen ppl and entropy as functions of the number
of correction rounds at fixed K: the rows of the sweep's and the compare report's
self-correction table and plot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from dllm_jax.evaluation.quality import Judge, judge_nll, quality_report, scored_mask
from dllm_jax.sampling.ancestral import ancestral
from dllm_jax.sampling.draws import Logits
from dllm_jax.sampling.generate import generate
from dllm_jax.sampling.revise import revise


class Revisions(NamedTuple):
    """Per sample (B,): scored tokens changed, corrections, changes that worsened, the judge
    NLL (nats) after the whole revision minus before, and changes past the scored part."""

    changed_B: np.ndarray
    corrections_B: np.ndarray
    worsened_B: np.ndarray
    delta_nll_B: np.ndarray
    unscored_B: np.ndarray

    def summary(self) -> dict:
        changed = int(self.changed_B.sum())
        return {"changed_per_sample": changed / len(self.changed_B),
                "correction_share": int(self.corrections_B.sum()) / changed if changed else None,
                "worsened_share": int(self.worsened_B.sum()) / changed if changed else None,
                "delta_nll_per_sample": float(self.delta_nll_B.mean()),
                "unscored_changes_per_sample": float(self.unscored_B.mean())}


def sample_nll(judge: Judge, tokens_BL) -> np.ndarray:
    """The judge's NLL (nats) of each sample's scored tokens, (B,)."""
    return judge_nll(judge.logits_fn, tokens_BL, judge.eos_id, judge.bos_id, judge.pad_id)[0]


def revision_meter(judge: Judge, before_BL, after_BL, before_nll_B=None) -> Revisions:
    """The ``Revisions`` of ``after_BL`` against ``before_BL`` (both (B, L) token ids);
    ``before_nll_B``, if given, is the judge's NLL of ``before_BL`` (saves its pass)."""
    before_BL, after_BL = np.asarray(before_BL), np.asarray(after_BL)
    if before_BL.shape != after_BL.shape or before_BL.ndim != 2:
        raise ValueError(f"before and after must be (B, L) of one shape, got {before_BL.shape} and {after_BL.shape}")

    base_B = sample_nll(judge, before_BL) if before_nll_B is None else np.asarray(before_nll_B)
    delta_B = sample_nll(judge, after_BL) - base_B
    num = before_BL.shape[0]
    differ_BL = before_BL != after_BL
    scored_BL = scored_mask(before_BL, judge.eos_id, judge.pad_id)
    unscored_B = np.sum(differ_BL & ~scored_BL, axis=-1)
    rows, cols = np.nonzero(differ_BL & scored_BL)
    changed_B = np.bincount(rows, minlength=num)
    if rows.size == 0:
        zeros = np.zeros(num, np.int64)
        return Revisions(changed_B, zeros, zeros, delta_B, unscored_B)
    variants = before_BL[rows].copy()
    variants[np.arange(rows.size), cols] = after_BL[rows, cols]
    single_C = sample_nll(judge, variants) - base_B[rows]
    return Revisions(changed_B, np.bincount(rows[single_C < 0], minlength=num),
                     np.bincount(rows[single_C > 0], minlength=num), delta_B, unscored_B)


def revision_records(
    graphdef, params, process, rounds: Sequence[int], *, judge: Judge, num_steps: int, length: int,
    num_samples: int, batch_size: int, quality_kw: dict, t: float = 0.1, seed: int = 0,
    logits: Logits = Logits(), rule=None, label: str | None = None, log=print,
) -> list[dict]:
    """One record per n in ``rounds``: K-step samples after n correction rounds.

    ``num_samples`` unprompted rows of ``length`` tokens are drawn with K = ``num_steps``
    ancestral steps (``logits`` sets e.g. a temperature) or steps of another ``rule`` (e.g.
    ReMDM; ``logits`` then unused), full length (``revise`` needs whole rows), then revised
    by ``max(rounds)`` rounds at noise level ``t`` with the model's own distribution; round
    n's tokens are ``history[n]`` (what ``rounds=n`` gives). Randomness comes from (seed,
    sample index), so the batch split does not change a figure. A record holds ``rounds``,
    ``nfe`` (K's passes + n), the ``quality_report`` of the revised samples
    (``quality_kw``) and the meter's ``summary`` against the K-step samples (``judge``).
    """
    rounds = _check_rounds(rounds, judge, num_samples, batch_size)
    label = label or ("ancestral" if rule is None else type(rule).__name__) + " + rounds"
    rule = ancestral(process, logits) if rule is None else rule
    before, history, nfe = [], [], []
    for start in range(0, num_samples, batch_size):
        idx = np.arange(start, min(start + batch_size, num_samples))
        gen = generate(graphdef, params, [[]] * len(idx), length=length, rule=rule, num_steps=num_steps,
                       seed=seed, indices=idx)
        rows = np.asarray(gen.tokens[:, :length])
        before.append(rows)
        nfe.append(gen.nfe)
        if rounds[-1] > 0:
            history.append(revise(graphdef, params, rows, process, rounds=rounds[-1], t=t, seed=seed + 1,
                                  indices=idx).history)
    before = np.concatenate(before)
    history = np.concatenate(history, axis=1) if history else before[None]
    base_nfe = float(np.mean(np.concatenate(nfe)))
    before_nll_B = sample_nll(judge, before)
    records = []
    for n in rounds:
        meter = revision_meter(judge, before, history[n], before_nll_B).summary()
        records.append({"kind": "revision", "rule": label, "num_steps": num_steps, "rounds": n,
                        "nfe": base_nfe + n, "t": t, **quality_report(history[n], **quality_kw), **meter})
        r = records[-1]
        share = "-" if r["correction_share"] is None else f"{r['correction_share']:.2f}"
        ppl = "-" if r["gen_ppl"] is None else f"{r['gen_ppl']:.2f}"
        log(f"  {label:>18s} K={num_steps:<4d} +{n:3d} rounds NFE={r['nfe']:6.1f} gen_ppl={ppl:>9s} "
            f"entropy={r['entropy']:.3f} changed/sample={r['changed_per_sample']:.1f} corrections={share}")
    return records


def _check_rounds(rounds, judge, num_samples, batch_size) -> list[int]:
    """``revision_records``' arguments checked before any sampling; the sorted rounds."""
    if isinstance(rounds, (int, np.integer)) or not all(
            isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 0 for n in rounds) or not rounds:
        raise ValueError(f"rounds must be a non-empty sequence of integers >= 0, got {rounds!r}")
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if judge is None:
        raise ValueError("the revision meter needs a judge (an AR run with the samples' tokenizer)")
    return sorted({int(n) for n in rounds})
