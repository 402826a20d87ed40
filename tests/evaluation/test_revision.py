"""The revision meter against a judge with a known table, and against scoring each change
by hand one sample at a time."""

import numpy as np
import pytest

from dllm_jax.evaluation.quality import Judge, judge_nll
from dllm_jax.evaluation.revision import revision_meter
from tests.evaluation.test_quality import BOS, EOS, LN2, PAD, bigram_judge

JUDGE = Judge(bigram_judge, None, EOS, BOS, PAD, 0)
BEFORE = np.array([[2, 0, 0, 1, 2, 0], [0, 1, 2, 0, 1, 2]])


def test_one_correction_one_worsening_by_hand():
    after = BEFORE.copy()
    after[0, 1] = 1  # 2 -> 0 -> 0 becomes 2 -> 1 -> 0: P(1|2) P(0|1) = 1/64 vs P(0|2) P(0|0) = 1/8: worse
    after[1, 0] = 1  # bos -> 0 -> 1 becomes bos -> 1 -> 1: 1/4 * 1/8 vs 1/2 * 1/2: worse
    after[1, 3] = 2  # 2 -> 0 -> 1 becomes 2 -> 2 -> 1: 1/4 * 1/8 vs 1/2 * 1/2: worse
    rev = revision_meter(JUDGE, BEFORE, after)
    assert rev.changed_B.tolist() == [1, 2] and rev.corrections_B.tolist() == [0, 0]
    assert rev.worsened_B.tolist() == [1, 2]
    np.testing.assert_allclose(rev.delta_nll_B[0], 3 * LN2, rtol=1e-6)  # 1/8 -> 1/64
    better = after.copy()
    better[0, 1] = 0  # back to the original: a correction of `after`
    back = revision_meter(JUDGE, after, better)
    assert back.corrections_B.tolist() == [1, 0] and back.summary()["correction_share"] == 1.0


def test_equals_scoring_each_change_alone():
    rng = np.random.default_rng(0)
    before = rng.integers(0, 3, (6, 8))
    after = np.where(rng.random((6, 8)) < 0.3, rng.integers(0, 3, (6, 8)), before)
    rev = revision_meter(JUDGE, before, after)

    def nll(row):
        return judge_nll(bigram_judge, row[None], EOS, BOS, PAD)[0][0]

    for b in range(6):
        deltas = []
        for c in np.nonzero(before[b] != after[b])[0]:
            variant = before[b].copy()
            variant[c] = after[b, c]
            deltas.append(nll(variant) - nll(before[b]))
        assert rev.changed_B[b] == len(deltas)
        assert rev.corrections_B[b] == sum(d < 0 for d in deltas)
        assert rev.worsened_B[b] == sum(d > 0 for d in deltas)
        np.testing.assert_allclose(rev.delta_nll_B[b], nll(after[b]) - nll(before[b]), rtol=1e-6)
    same = revision_meter(JUDGE, before, before)
    assert same.changed_B.sum() == 0 and same.summary()["correction_share"] is None
    with pytest.raises(ValueError, match=r"\(B, L\) of one shape"):
        revision_meter(JUDGE, before, after[:, :4])
