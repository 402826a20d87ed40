"""The revision meter against a judge with a known table, and against scoring each change
by hand one sample at a time; its sweep rows against revising and metering by hand."""

import numpy as np
import pytest

from dllm_jax.config import MeshConfig, ModelConfig, special_ids
from dllm_jax.diffusion import LogLinear, MaskedProcess
from dllm_jax.evaluation.quality import Judge, judge_nll, quality_report
from dllm_jax.evaluation.revision import revision_meter, revision_records
from dllm_jax.nn.model import create_model
from dllm_jax.sampling import ancestral, generate, revise
from dllm_jax.sharding import make_mesh
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


def test_changes_past_the_first_eos_are_counted_apart():
    """The judge scores a sample up to its first eos: changes after it are no one's to rate."""
    before = np.array([[2, 0, EOS, 1, 2, 0]])
    after = np.array([[2, 1, EOS, 0, 0, 0]])  # one scored change (position 1), two past the eos
    rev = revision_meter(JUDGE, before, after)
    assert rev.changed_B.tolist() == [1] and rev.unscored_B.tolist() == [2]
    only_scored = np.array([[2, 1, EOS, 1, 2, 0]])
    np.testing.assert_allclose(rev.delta_nll_B, revision_meter(JUDGE, before, only_scored).delta_nll_B)
    assert rev.summary()["unscored_changes_per_sample"] == 2.0
    eos_moved = revision_meter(JUDGE, before, np.array([[2, 0, 1, 1, 2, 0]]))  # the eos itself is scored
    assert eos_moved.changed_B.tolist() == [1] and eos_moved.unscored_B.tolist() == [0]


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


def test_revision_records_equal_revising_each_count_alone_and_ignore_the_batch_split():
    """Round n's row is ``revise(rounds=n)`` of the K-step samples, metered and scored; the
    rows do not depend on the batch split; zero rounds change nothing."""
    v, length, k, num = 4, 6, 3, 6
    graphdef, params = create_model(ModelConfig(num_tokens=v, max_len=8, d_model=16, num_layers=1, num_heads=2),
                                    make_mesh(MeshConfig()))
    process = MaskedProcess(v, LogLinear(), mask_id=special_ids(v).mask)
    kw = {"eos_id": EOS, "pad_id": PAD, "judge_logits_fn": bigram_judge, "bos_id": BOS}
    common = dict(judge=JUDGE, num_steps=k, length=length, num_samples=num, quality_kw=kw, t=0.3, seed=2,
                  log=lambda _: None)
    rows = revision_records(graphdef, params, process, [3, 0, 1], batch_size=4, **common)
    assert rows == revision_records(graphdef, params, process, [0, 1, 3], batch_size=num, **common)
    samples = np.asarray(generate(graphdef, params, [[]] * num, length=length, rule=ancestral(process),
                                  num_steps=k, seed=2).tokens[:, :length])
    assert [r["rounds"] for r in rows] == [0, 1, 3] and [r["nfe"] for r in rows] == [k, k + 1, k + 3]
    assert rows[0]["changed_per_sample"] == 0 and rows[0]["correction_share"] is None
    for r in rows:
        after = samples if r["rounds"] == 0 else revise(graphdef, params, samples, process, rounds=r["rounds"],
                                                        t=0.3, seed=3).tokens
        expected = {**quality_report(after, **kw), **revision_meter(JUDGE, samples, after).summary()}
        assert {key: r[key] for key in expected} == expected
    assert rows[-1]["changed_per_sample"] > 0  # t = 0.3 on an untrained model: something moves
    for bad in ([-1], [], [1.5], 3):
        with pytest.raises(ValueError, match="rounds must be a non-empty sequence of integers >= 0"):
            revision_records(graphdef, params, process, bad, batch_size=4, **common)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        revision_records(graphdef, params, process, [0], batch_size=0, **common)
