"""The revision meter: what a corrector changed in each sample, and whether each change
helped by a judge's measure.

A change is a committed token that the revision replaced. It is scored alone: the sample
before the revision with only that token changed, under the causal judge
(``quality.judge_nll``). A *correction* lowers the judge's NLL of the sequence, a change
that raises it *worsens* the sample (ties count as neither). The whole revision's effect is
the judge NLL after minus before.

``revision_records`` puts the meter beside gen ppl and entropy as functions of the number
of correction rounds at fixed K: the rows of the sweep's and the compare report's
self-correction table and plot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from dllm_jax.evaluation.quality import Judge, judge_nll, quality_report
from dllm_jax.sampling.ancestral import ancestral
from dllm_jax.sampling.draws import Logits
from dllm_jax.sampling.generate import generate
from dllm_jax.sampling.revise import revise


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


def revision_records(
    graphdef, params, process, rounds: Sequence[int], *, judge: Judge, num_steps: int, length: int,
    num_samples: int, batch_size: int, quality_kw: dict, t: float = 0.1, seed: int = 0,
    logits: Logits = Logits(), rule=None, label: str = "ancestral + rounds", log=print,
) -> list[dict]:
    """One record per n in ``rounds``: K-step samples after n correction rounds.

    ``num_samples`` unprompted rows of ``length`` tokens are drawn with K = ``num_steps``
    ancestral steps (``logits`` sets e.g. a temperature), or of another step ``rule`` (e.g.
    ReMDM); rows run to full length, as ``revise`` needs whole rows; then revised by ``max(rounds)`` rounds at noise level
    ``t``; round n's tokens are ``history[n]`` (what ``rounds=n`` gives). Randomness comes
    from (seed, sample index), so the batch split does not change a figure. A record holds
    ``rounds``, ``nfe`` (K's passes + n), the ``quality_report`` of the revised samples
    (``quality_kw``) and the meter's ``summary`` against the K-step samples (``judge``).
    """
    rounds = sorted({int(n) for n in rounds})
    if not rounds or rounds[0] < 0:
        raise ValueError(f"rounds must be integers >= 0, got {rounds}")
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
    records = []
    for n in rounds:
        meter = revision_meter(judge, before, history[n]).summary()
        records.append({"kind": "revision", "rule": label, "num_steps": num_steps, "rounds": n,
                        "nfe": base_nfe + n, "t": t, **quality_report(history[n], **quality_kw), **meter})
        r = records[-1]
        share = "-" if r["correction_share"] is None else f"{r['correction_share']:.2f}"
        ppl = "-" if r["gen_ppl"] is None else f"{r['gen_ppl']:.2f}"
        log(f"  {label:>18s} K={num_steps:<4d} +{n:3d} rounds NFE={r['nfe']:6.1f} gen_ppl={ppl:>9s} "
            f"entropy={r['entropy']:.3f} changed/sample={r['changed_per_sample']:.1f} corrections={share}")
    return records
