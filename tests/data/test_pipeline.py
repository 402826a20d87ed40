"""Packing keeps the token stream, padding never enters the loss, order is a function of the
seed, resuming from a saved state is exact, and global batches carry the batch sharding."""

import itertools
import json

import jax
import numpy as np
import pytest

from dllm_jax.config import special_ids
from dllm_jax.data import GlobalBatches, PackedSequences, TextCorpus, embedded_corpus
from dllm_jax.sharding import batch_sharding, make_mesh


@pytest.fixture(scope="module")
def source():
    """The embedded validation split (~150 documents, short and long)."""
    return embedded_corpus("validation")


def stream(source, tokenizer, order) -> list[int]:
    ids = tokenizer.encode_batch([source[int(i)] for i in order])
    return [t for doc in ids for t in (*doc, tokenizer.eos_id)]


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def test_packing_preserves_the_token_stream(source, tokenizer):
    seqs = PackedSequences(source, tokenizer, seq_len=64, seed=3, num_epochs=2)
    chunks = list(seqs)
    expected = stream(source, tokenizer, seqs.order(0)) + stream(source, tokenizer, seqs.order(1))
    assert len(chunks) == len(expected) // 64  # only the final incomplete chunk is dropped
    got = np.concatenate([c.tokens_L for c in chunks])
    np.testing.assert_array_equal(got, expected[: got.size])
    assert all(c.tokens_L.dtype == np.int32 and c.tokens_L.shape == (64,) for c in chunks)
    assert all(c.loss_mask_L.all() for c in chunks)
    # Each epoch visits every document once, in a different order.
    for epoch in (0, 1):
        assert sorted(seqs.order(epoch)) == list(range(len(source)))
    assert list(seqs.order(0)) != list(seqs.order(1))


def test_unpacked_padding_is_masked_exactly(source, tokenizer):
    seq_len = 48
    pad = special_ids(tokenizer.num_tokens).pad
    seqs = PackedSequences(
        source, tokenizer, seq_len, seed=0, pack=False, shuffle=False, num_epochs=1
    )
    examples = list(seqs)
    assert len(examples) == len(source)
    lengths = [len(tokenizer.encode(doc)) for doc in source]
    assert min(lengths) < seq_len - 1 < max(lengths)  # both short and truncated documents
    for example, doc, n in zip(examples, source, lengths, strict=True):
        tokens, mask = example.tokens_L, example.loss_mask_L
        np.testing.assert_array_equal(mask, tokens != pad)  # False exactly on padding
        ids = tokenizer.encode(doc)
        if n < seq_len:  # the document, eos, then padding
            np.testing.assert_array_equal(tokens[: n + 1], ids + [tokenizer.eos_id])
            assert mask.sum() == n + 1
        else:  # truncated, no room for eos
            np.testing.assert_array_equal(tokens, ids[:seq_len])
            assert mask.all()


def test_order_is_a_function_of_the_seed(source, tokenizer):
    def first(seed):
        return np.stack(
            [e.tokens_L for e in take(PackedSequences(source, tokenizer, 32, seed), 20)]
        )

    np.testing.assert_array_equal(first(0), first(0))
    assert not np.array_equal(first(0), first(1))
    unshuffled = PackedSequences(source, tokenizer, 32, seed=5, shuffle=False)
    assert list(unshuffled.order(3)) == list(range(len(source)))


@pytest.mark.parametrize("pack", [True, False])
def test_resume_from_state_is_exact(source, tokenizer, pack):
    seq_len, n_before, n_after = 40, 230, 200  # crosses an epoch boundary (~150 docs)
    reference = PackedSequences(source, tokenizer, seq_len, seed=7, pack=pack)
    take(reference, n_before)
    state = json.loads(json.dumps(reference.get_state()))  # JSON-able
    if pack:
        assert state["offset"] > 0  # mid-document
    resumed = PackedSequences(source, tokenizer, seq_len, seed=7, pack=pack)
    resumed.set_state(state)
    for a, b in zip(take(reference, n_after), take(resumed, n_after), strict=True):
        np.testing.assert_array_equal(a.tokens_L, b.tokens_L)
        np.testing.assert_array_equal(a.loss_mask_L, b.loss_mask_L)
    assert reference.get_state()["epoch"] >= 1


def test_state_from_other_settings_is_refused(source, tokenizer):
    state = PackedSequences(source, tokenizer, 32, seed=1).get_state()
    with pytest.raises(ValueError, match="seed"):
        PackedSequences(source, tokenizer, 32, seed=2).set_state(state)
    with pytest.raises(ValueError, match="seq_len"):
        PackedSequences(source, tokenizer, 64, seed=1).set_state(state)


def test_global_batches(source, tokenizer):
    mesh = make_mesh()
    batches = GlobalBatches(PackedSequences(source, tokenizer, 32, seed=2), 6, mesh)
    plain = PackedSequences(source, tokenizer, 32, seed=2)
    for step in range(3):
        batch = next(batches)
        assert batch["tokens"].sharding == batch_sharding(mesh, 2)
        assert batch["loss_mask"].sharding == batch_sharding(mesh, 2)
        assert batch["index"].sharding == batch_sharding(mesh, 1)
        assert isinstance(batch["tokens"], jax.Array)
        assert (batch["tokens"].dtype, batch["loss_mask"].dtype, batch["index"].dtype) == (
            np.int32,
            np.bool_,
            np.int32,
        )
        np.testing.assert_array_equal(batch["index"], step * 6 + np.arange(6))
        expected = take(plain, 6)
        np.testing.assert_array_equal(batch["tokens"], np.stack([e.tokens_L for e in expected]))


def test_global_batches_resume(source, tokenizer):
    mesh = make_mesh()

    def make():
        return GlobalBatches(PackedSequences(source, tokenizer, 24, seed=4, pack=False), 8, mesh)

    reference = make()
    take(reference, 25)  # past one epoch of ~150 documents
    resumed = make()
    resumed.set_state(json.loads(json.dumps(reference.get_state())))
    for a, b in zip(take(reference, 5), take(resumed, 5), strict=True):
        for key in ("tokens", "loss_mask", "index"):
            np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(b["index"], 29 * 8 + np.arange(8))


def test_finite_epochs_stop_without_partial_batch(tokenizer):
    docs = TextCorpus(tuple(f"d{i}" for i in range(10)), tuple(f"doc {i} " for i in range(10)))
    seqs = PackedSequences(docs, tokenizer, 4, seed=0, pack=False, num_epochs=1)
    batches = GlobalBatches(seqs, 4, make_mesh())
    assert len(list(batches)) == 2  # 10 documents -> 2 full batches; 2 left over
    assert batches.get_state()["step"] == 2


def test_errors(source, tokenizer, monkeypatch):
    with pytest.raises(ValueError, match="empty source"):
        PackedSequences(TextCorpus((), ()), tokenizer, 16)
    with pytest.raises(ValueError, match="seq_len"):
        PackedSequences(source, tokenizer, 0)
    seqs = PackedSequences(source, tokenizer, 16)
    with pytest.raises(ValueError, match="global_batch_size"):
        GlobalBatches(seqs, 0, make_mesh())
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    with pytest.raises(
        ValueError,
        match="global_batch_size=8 is not divisible by the number of JAX processes \\(3\\)",
    ):
        GlobalBatches(seqs, 8, make_mesh())
