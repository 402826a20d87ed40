"""Sample-quality metrics on hand-made samples, with every expected value worked by hand.

The judge is a fixed bigram table (probabilities powers of 1/2, so NLLs are multiples of
ln 2); a real causal Transformer judge is checked against prefix-by-prefix evaluation,
and a judge loaded from a run directory against the model it was saved from.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax.checkpoint import Checkpointer
from dllm_jax.config import (
    DataConfig,
    ExperimentConfig,
    MeshConfig,
    ModelConfig,
    NoiseConfig,
    TrainConfig,
    special_ids,
)
from dllm_jax.data.tokenizer import Tokenizer
from dllm_jax.evaluation import (
    distinct_n,
    generative_perplexity,
    judge_from_model,
    judge_nll,
    quality_report,
    repetition_rate,
    unigram_entropy,
)
from dllm_jax.nn import apply_model, create_model
from dllm_jax.nn.model import abstract_model
from dllm_jax.sharding import make_mesh
from dllm_jax.training.loop import load_judge
from dllm_jax.training.state import create_train_state

LN2 = math.log(2.0)
# Ordinary tokens 0..3 with eos = 3; pad = 4 and bos = 5 (special_ids(4)).
V, EOS = 4, 3
PAD, BOS = special_ids(V).pad, special_ids(V).bos
IDS = {"eos_id": EOS, "pad_id": PAD}
# P[prev, next]: rows for every id the judge may read (0..3, pad, bos).
BIGRAM = np.array(
    [
        [1 / 4, 1 / 2, 1 / 8, 1 / 8],  # after 0
        [1 / 8, 1 / 8, 1 / 4, 1 / 2],  # after 1
        [1 / 2, 1 / 8, 1 / 4, 1 / 8],  # after 2
        [1 / 4, 1 / 4, 1 / 4, 1 / 4],  # after eos
        [1 / 4, 1 / 4, 1 / 4, 1 / 4],  # after pad
        [1 / 2, 1 / 4, 1 / 8, 1 / 8],  # after bos
    ]
)


def bigram_judge(tokens_BL):
    return jnp.log(jnp.asarray(BIGRAM, jnp.float32))[tokens_BL]


SAMPLES = np.array(
    [
        [0, 1, 3, 2, 2, 0],  # eos at 2: tokens after it ignored
        [2, 0, 0, 1, 2, 0],  # no eos: scored whole
        [1, 3, PAD, PAD, PAD, PAD],  # eos, then padding
    ]
)
# Judge, teacher-forced after bos (scored tokens include the first eos):
#   row 0: P(0|bos) P(1|0) P(3|1) = 1/2 * 1/2 * 1/2                -> 3 ln 2, 3 tokens
#   row 1: P(2|bos) P(0|2) P(0|0) P(1|0) P(2|1) P(0|2)
#          = 1/8 * 1/2 * 1/4 * 1/2 * 1/4 * 1/2                       -> 10 ln 2, 6 tokens
#   row 2: P(1|bos) P(3|1) = 1/4 * 1/2                               -> 3 ln 2, 2 tokens
NLL = np.array([3, 10, 3]) * LN2
TOKENS = np.array([3, 6, 2])
# Content tokens (before the first eos, no pads): [0, 1], [2, 0, 0, 1, 2, 0], [1].
ENTROPY_ROWS = [
    LN2,  # {0, 1}: two tokens, once each
    -(2 / 6 * math.log(2 / 6) + 3 / 6 * math.log(3 / 6) + 1 / 6 * math.log(1 / 6)),
    0.0,  # one token
]
# Pooled content: 0 x4, 1 x3, 2 x2 out of 9.
CORPUS_ENTROPY = -sum(c / 9 * math.log(c / 9) for c in (4, 3, 2))


def test_judge_nll_and_generative_perplexity_by_hand():
    for batch_size in (64, 2):  # 2: the last chunk is padded
        nll_B, tokens_B = judge_nll(bigram_judge, SAMPLES, EOS, BOS, PAD, batch_size=batch_size)
        np.testing.assert_allclose(nll_B, NLL, rtol=1e-6)
        np.testing.assert_array_equal(tokens_B, TOKENS)
    # exp(16 ln 2 / 11) = 2 ** (16 / 11): per-token, not a mean of per-sample perplexities.
    assert generative_perplexity(NLL, TOKENS) == pytest.approx(2 ** (16 / 11), rel=1e-12)
    with pytest.raises(ValueError, match="vocabulary"):
        judge_nll(bigram_judge, np.array([[0, 5, 3]]), EOS, BOS, PAD)  # bos inside a sample


def test_counting_metrics_by_hand():
    entropy, corpus = unigram_entropy(SAMPLES, **IDS)
    assert entropy == pytest.approx(np.mean(ENTROPY_ROWS), rel=1e-12)
    assert corpus == pytest.approx(CORPUS_ENTROPY, rel=1e-12)
    assert distinct_n(SAMPLES, 1, **IDS) == pytest.approx(3 / 9)  # {0, 1, 2} of 9 tokens
    # Bigrams: (0,1) | (2,0) (0,0) (0,1) (1,2) (2,0): 4 distinct of 6, pooled over samples.
    assert distinct_n(SAMPLES, 2, **IDS) == pytest.approx(4 / 6)
    assert distinct_n(SAMPLES, 3, **IDS) == 1.0  # row 1's four trigrams are all different
    assert repetition_rate(SAMPLES, 2, **IDS) == pytest.approx(1 / 6)  # (2,0) again in row 1


def test_repetition_counts_earlier_ngrams_within_a_sample_only():
    samples = np.array(
        [
            [1, 2, 3, 1, 2, 3, 1, 2],  # 4-grams 1231 2312 3123 1231* 2312*: 2 repeats of 5
            [4, 4, 4, 4, 4, 0, 0, 0],  # eos = 0: 4444 4444*: 1 repeat of 2
            [1, 2, 3, 1, 0, 0, 0, 0],  # 1231 occurred in another sample: not a repeat; 0 of 1
        ]
    )
    ids = {"eos_id": 0, "pad_id": 9}
    assert repetition_rate(samples, 4, **ids) == pytest.approx(3 / 8)
    # Distinct 4-grams pooled over the corpus: {1231, 2312, 3123, 4444} of 8.
    assert distinct_n(samples, 4, **ids) == pytest.approx(4 / 8)
    # A periodic sample has low entropy: ln 3 for row 0 (3:2:3 is not uniform, so below).
    entropy_row0 = -(3 / 8 * math.log(3 / 8) * 2 + 2 / 8 * math.log(2 / 8))
    assert unigram_entropy(samples[:1], **ids)[0] == pytest.approx(entropy_row0)
    assert unigram_entropy(samples[1:2], **ids)[0] == 0.0


def test_tokens_after_eos_and_pads_change_nothing():
    rng = np.random.default_rng(0)
    altered = SAMPLES.copy()
    altered[0, 3:] = rng.integers(0, 5, size=3)  # anything after row 0's eos
    altered[2, 2:] = [EOS, 0, 1, PAD]  # after row 2's eos: another eos, tokens, a pad
    base = quality_report(SAMPLES, judge_logits_fn=bigram_judge, bos_id=BOS, **IDS)
    assert quality_report(altered, judge_logits_fn=bigram_judge, bos_id=BOS, **IDS) == base
    # Pads are skipped wherever they are: row 1 with pads appended equals row 1 alone.
    padded = np.array([[2, 0, 0, 1, 2, 0, PAD, PAD]])
    nll_B, tokens_B = judge_nll(bigram_judge, padded, EOS, BOS, PAD)
    assert tokens_B[0] == 6 and nll_B[0] == pytest.approx(10 * LN2, rel=1e-6)
    assert quality_report(padded, **IDS)["mean_length"] == 6.0


def test_quality_report_collects_everything():
    report = quality_report(SAMPLES, judge_logits_fn=bigram_judge, bos_id=BOS, **IDS)
    assert report["gen_ppl"] == pytest.approx(2 ** (16 / 11), rel=1e-6)
    assert report["nll"] == pytest.approx(16 * LN2 / 11, rel=1e-6)
    assert report["tokens"] == 11 and report["num_samples"] == 3
    assert report["mean_length"] == pytest.approx((2 + 6 + 1) / 3)
    assert report["entropy"] == pytest.approx(np.mean(ENTROPY_ROWS))
    assert report["corpus_entropy"] == pytest.approx(CORPUS_ENTROPY)
    assert [report[f"distinct_{n}"] for n in (1, 2, 3, 4)] == pytest.approx([3 / 9, 4 / 6, 1, 1])
    assert report["rep_4"] == 0.0
    without_judge = quality_report(SAMPLES, **IDS)
    assert without_judge["gen_ppl"] is None
    assert {k: v for k, v in without_judge.items() if k not in ("gen_ppl", "nll", "tokens")} == {
        k: v for k, v in report.items() if k not in ("gen_ppl", "nll", "tokens")
    }


TINY_AR = ModelConfig(
    num_tokens=16, max_len=12, d_model=32, num_layers=2, num_heads=2, mlp_dim=64, attention="causal"
)


def test_transformer_judge_matches_prefix_by_prefix_scoring():
    """Position l's logits must depend on bos + x_<l only: scoring each prefix with junk
    after it gives the same NLL (a judge that saw the future would not)."""
    mesh = make_mesh(MeshConfig())
    graphdef, params = create_model(TINY_AR, mesh, seed=3)
    judge = judge_from_model(graphdef, params)
    ids = special_ids(TINY_AR.num_tokens)
    eos = 2
    samples = np.array([[5, 7, 9, 2, 11, 4, 4, 1], [3, 3, 8, 8, 13, 0, 6, 10]])
    nll_B, tokens_B = judge_nll(judge, samples, eos, ids.bos, ids.pad)
    np.testing.assert_array_equal(tokens_B, [4, 8])
    forward = jax.jit(lambda x: jax.nn.log_softmax(apply_model(graphdef, params, x), axis=-1))
    junk = np.random.default_rng(0).integers(0, 16, size=samples.shape[1])
    expected = np.zeros(2)
    for b, row in enumerate(samples):
        for pos in range(tokens_B[b]):
            inp = np.concatenate([[ids.bos], row[:pos], junk[: samples.shape[1] - pos - 1]])
            expected[b] -= float(forward(inp[None].astype(np.int32))[0, pos, row[pos]])
    np.testing.assert_allclose(nll_B, expected, rtol=1e-5)
    bidirectional = ModelConfig(**{**TINY_AR.__dict__, "attention": "bidirectional"})
    with pytest.raises(ValueError, match="causal"):
        judge_from_model(*abstract_model(bidirectional))
    with pytest.raises(ValueError, match="at most 12"):
        judge(jnp.zeros((1, 13), jnp.int32))


@pytest.mark.slow
def test_load_judge_from_run_directory(tmp_path):
    """A run directory written by hand (config, tokenizer, checkpoint) loads as a judge."""
    texts = ["the cat sat on the mat\n", "a dog and a cat", "hello world, hello there"]
    tok = Tokenizer.train(texts * 20, 300, tmp_path / "tok.model")
    model = ModelConfig(
        num_tokens=tok.num_tokens,
        max_len=16,
        d_model=32,
        num_layers=1,
        num_heads=2,
        mlp_dim=64,
        attention="causal",
    )
    exp = ExperimentConfig(
        name="judge",
        model=model,
        noise=NoiseConfig(process="ar"),
        train=TrainConfig(batch_size=2, seq_len=16, steps=1, seed=7),
        data=DataConfig(tokenizer=str(tmp_path / "tok.model"), vocab_size=tok.num_tokens),
    )
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(exp.to_dict()))
    graphdef, state, _ = create_train_state(exp.model, exp.train, make_mesh(exp.mesh))
    ckpt = Checkpointer(run / "checkpoints")
    ckpt.save(5, {"state": state}, {"step": 5, "tokenizer_sha256": tok.sha256})
    ckpt.wait()
    ckpt.close()

    judge = load_judge(run)
    ids = special_ids(tok.num_tokens)
    assert (judge.eos_id, judge.bos_id, judge.pad_id, judge.step) == (
        tok.eos_id,
        ids.bos,
        ids.pad,
        5,
    )
    assert judge.tokenizer.sha256 == tok.sha256
    tokens = np.array([tok.encode("the cat sat")[:8] + [tok.eos_id]], np.int32)
    logits = np.asarray(judge.logits_fn(jnp.asarray(tokens)))
    params = state.ema if state.ema is not None else state.params
    expected = jax.jit(lambda p, x: apply_model(graphdef, p, x))(params, tokens)
    np.testing.assert_allclose(logits, np.asarray(expected), rtol=1e-5, atol=1e-5)
