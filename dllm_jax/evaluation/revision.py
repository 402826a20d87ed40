"""The revision meter: what a corrector changed in each sample, and whether each change
helped by a judge's measure.

A change is a committed token that the revision replaced. It is scored alone: the sample
before the revision with only that token changed, under the causal judge
(``quality.judge_nll``). A *correction* lowers the judge's NLL of the sequence, a change
that raises it *worsens* the sample (ties count as neither). The whole revision's effect is
the judge NLL after minus before.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from dllm_jax.evaluation.quality import Judge, judge_nll


class Revisions(NamedTuple):
    """Per sample (B,): tokens changed, corrections, changes that worsened, and the judge
    NLL (nats) after the whole revision minus before."""

    changed_B: np.ndarray
    corrections_B: np.ndarray
    worsened_B: np.ndarray
    delta_nll_B: np.ndarray

    def summary(self) -> dict:
        changed = int(self.changed_B.sum())
        return {"changed_per_sample": changed / len(self.changed_B),
                "correction_share": int(self.corrections_B.sum()) / changed if changed else None,
                "worsened_share": int(self.worsened_B.sum()) / changed if changed else None,
                "delta_nll_per_sample": float(self.delta_nll_B.mean())}


def revision_meter(judge: Judge, before_BL, after_BL) -> Revisions:
    """The ``Revisions`` of ``after_BL`` against ``before_BL`` (both (B, L) token ids)."""
    before_BL, after_BL = np.asarray(before_BL), np.asarray(after_BL)
    if before_BL.shape != after_BL.shape or before_BL.ndim != 2:
        raise ValueError(f"before and after must be (B, L) of one shape, got {before_BL.shape} and {after_BL.shape}")

    def nll(tokens_BL):
        return judge_nll(judge.logits_fn, tokens_BL, judge.eos_id, judge.bos_id, judge.pad_id)[0]

    base_B = nll(before_BL)
    delta_B = nll(after_BL) - base_B
    rows, cols = np.nonzero(before_BL != after_BL)
    num = before_BL.shape[0]
    changed_B = np.bincount(rows, minlength=num)
    if rows.size == 0:
        zeros = np.zeros(num, np.int64)
        return Revisions(changed_B, zeros, zeros, delta_B)
    variants = before_BL[rows].copy()
    variants[np.arange(rows.size), cols] = after_BL[rows, cols]
    single_C = nll(variants) - base_B[rows]
    return Revisions(changed_B, np.bincount(rows[single_C < 0], minlength=num),
                     np.bincount(rows[single_C > 0], minlength=num), delta_B)
