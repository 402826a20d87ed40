"""Local files → TFDS array_record dataset → tfds.data_source → packing → global batches,
with nothing lost on the way."""

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

from dllm_jax.data import GlobalBatches, PackedSequences, local_text, make_source, tfds_text  # noqa: E402
from dllm_jax.data.corpus import in_validation  # noqa: E402
from dllm_jax.data.tfds_builder import build_local_tfds  # noqa: E402
from dllm_jax.sharding import make_mesh  # noqa: E402


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Text files (names chosen so both splits are non-empty) and a TFDS dir built from them."""
    root = tmp_path_factory.mktemp("tfds")
    texts = root / "texts"
    texts.mkdir()
    names = [f"doc_{i:03d}.txt" for i in range(40)]
    validation = [n for n in (f"val_{i}.txt" for i in range(500)) if in_validation(n)][:3]
    for k, name in enumerate(names + validation):
        body = f"Document {k}:\n  spaced  out\ttabbed\r\nunicode 😀 中文 {'word ' * (k % 9)}\n"
        (texts / name).write_text(body, encoding="utf-8", newline="")
    builder = build_local_tfds(texts, root / "data", name="tiny_corpus")
    return texts, root / "data", builder


def test_data_source_reads_back_exactly(prepared):
    texts, data_dir, builder = prepared
    for split in ("train", "validation"):
        expected = local_text(texts, split)
        got = tfds_text("tiny_corpus", split, str(data_dir))
        assert len(got) == len(expected) > 0
        assert [got[i] for i in range(len(got))] == [expected[i] for i in range(len(expected))]
        assert builder.as_data_source(split)[0]["text"] == expected[0].encode("utf-8")
        assert builder.info.splits[split].num_examples == len(expected)
    via_spec = make_source(f"tfds:tiny_corpus@{data_dir}", "validation")
    assert [via_spec[i] for i in range(3)] == [local_text(texts, "validation")[i] for i in range(3)]


def test_tfds_to_global_batches_decodes_to_the_documents(prepared, tokenizer):
    _, data_dir, _ = prepared
    source = tfds_text("tiny_corpus", "train", str(data_dir))
    docs = [source[i] for i in range(len(source))]
    batch_size, seq_len = 4, 16

    packed = PackedSequences(source, tokenizer, seq_len, seed=0, shuffle=False, num_epochs=1)
    batches = list(GlobalBatches(packed, batch_size, make_mesh()))
    tokens = np.concatenate([np.asarray(b["tokens"]).reshape(-1) for b in batches])
    full = [t for doc in docs for t in (*tokenizer.encode(doc), tokenizer.eos_id)]
    assert len(full) - tokens.size < batch_size * seq_len  # only a partial batch is dropped
    np.testing.assert_array_equal(tokens, full[: tokens.size])
    assert tokenizer.decode(full) == "".join(docs)
    assert "".join(docs).startswith(tokenizer.decode(tokens).rstrip("\ufffd"))

    # One document per row: every row decodes to exactly its document.
    rows = PackedSequences(source, tokenizer, 96, seed=0, pack=False, shuffle=False, num_epochs=1)
    decoded = [
        tokenizer.decode(np.asarray(r))
        for b in GlobalBatches(rows, 4, make_mesh())
        for r in b["tokens"]
    ]
    assert decoded == docs[: len(decoded)] and len(decoded) == len(docs) // 4 * 4


def test_bad_names_and_missing_paths(tmp_path, prepared):
    with pytest.raises(ValueError, match="no feature 'body'"):
        tfds_text("tiny_corpus", "train", str(prepared[1]), feature="body")
    with pytest.raises(ValueError, match="snake_case"):
        build_local_tfds(tmp_path, tmp_path / "data", name="Bad-Name")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_local_tfds(tmp_path / "nowhere", tmp_path / "data")


def test_unknown_dataset_and_missing_data_dir_are_one_line_errors(tmp_path, prepared):
    """TFDS's own errors are 250+ lines (every registered name) or talk about TFRECORD."""
    with pytest.raises(FileNotFoundError, match=r"TFDS data_dir '.*missing' \(for dataset 'tiny_corpus'\) does not exist"):
        make_source(f"tfds:tiny_corpus@{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match=r"TFDS knows no dataset 'no_such_corpus'") as info:
        make_source(f"tfds:no_such_corpus@{prepared[1]}")
    assert len(str(info.value).splitlines()) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"TFDS knows no dataset 'tiny_corpus': .* under data_dir"):
        make_source(f"tfds:tiny_corpus@{tmp_path / 'empty'}")
