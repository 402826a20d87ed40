"""The tokenizer is lossless, deterministic, picklable, and fails clearly."""

import pickle

import numpy as np
import pytest

from dllm_jax.config import special_ids
from dllm_jax.data import Tokenizer, embedded_corpus
from dllm_jax.data.chat import CHAT_SYMBOLS
from dllm_jax.data.tokenizer import _WHITESPACE_MARK

AWKWARD = [
    "",
    " ",
    "   ",
    "  leading spaces",
    "trailing spaces   ",
    "many     inner   spaces",
    "\t",
    "tab\tseparated\t\tvalues\t",
    "\n",
    "\n\n\nthree newlines first\n",
    "windows\r\nline\r\nendings\r\n",
    "lone\rcarriage return",
    " \n \t \r\n ",
    "emoji 😀🎉 and a family 👨‍👩‍👧‍👦",
    "中文字符 日本語のテキスト 한국어",
    "combining e\u0301 vs \u00e9, ligature \ufb01",
    "right-to-left: \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
    "control \x00\x01\x1f\x7f chars",
    f"sentencepiece's own marker {_WHITESPACE_MARK} and {_WHITESPACE_MARK * 3}x{_WHITESPACE_MARK}",
    _WHITESPACE_MARK,
    "<s> </s> <unk> <0x41> look like pieces",
    "def f(x):\n    return {'a': [1, 2]}  # code\n",
]


def random_strings(num: int, seed: int = 0) -> list[str]:
    """Random strings mixing ASCII, whitespace, Latin-1, CJK, emoji and arbitrary code points."""
    rng = np.random.default_rng(seed)
    pools = [
        list("abc XYZ  \t\n\r.,;'\"(){}_-0123456789"),
        [chr(c) for c in range(0xA0, 0x250)],
        [chr(c) for c in range(0x4E00, 0x4E80)],
        [chr(c) for c in range(0x1F600, 0x1F650)],
        [_WHITESPACE_MARK, "\u200d", "\ufeff", "\x00"],
    ]
    out = []
    for _ in range(num):
        chars = []
        for _ in range(rng.integers(0, 60)):
            if rng.random() < 0.05:  # any code point except surrogates
                c = int(rng.integers(1, 0x110000))
                chars.append(chr(c) if not 0xD800 <= c < 0xE000 else "?")
            else:
                pool = pools[rng.choice(len(pools), p=[0.6, 0.1, 0.1, 0.1, 0.1])]
                chars.append(pool[rng.integers(len(pool))])
        out.append("".join(chars))
    return out


def test_roundtrip_every_embedded_document(tokenizer):
    docs = list(embedded_corpus("all"))
    ids = tokenizer.encode_batch(docs)
    bad = [i for i, (d, x) in enumerate(zip(docs, ids, strict=True)) if tokenizer.decode(x) != d]
    assert not bad, f"{len(bad)} of {len(docs)} documents do not round-trip, e.g. {docs[bad[0]]!r}"
    flat = np.concatenate([np.asarray(x) for x in ids])
    assert flat.min() >= 0 and flat.max() < tokenizer.num_tokens
    # A learned vocabulary compresses English well; a broken one falls back to bytes.
    assert sum(map(len, docs)) / flat.size > 3.0


@pytest.mark.parametrize("text", AWKWARD, ids=range(len(AWKWARD)))
def test_roundtrip_awkward_strings(tokenizer, text):
    ids = tokenizer.encode(text)
    assert all(0 <= i < tokenizer.num_tokens for i in ids)
    assert tokenizer.decode(ids) == text


def test_roundtrip_random_strings(tokenizer):
    texts = random_strings(300)
    for text, ids in zip(texts, tokenizer.encode_batch(texts), strict=True):
        assert tokenizer.decode(ids) == text
        assert tokenizer.encode(text) == ids  # batch and single encodings agree


def test_fixed_ids_and_specials_dropped(tokenizer):
    assert tokenizer.num_tokens == 3000
    assert tokenizer.eos_id == 2
    sp = tokenizer.processor
    assert [sp.id_to_piece(i) for i in range(6)] == ["<unk>", "<s>", "</s>", "\n", "\r", "\t"]
    assert [sp.id_to_piece(i) for i in range(6, 13)] == list(CHAT_SYMBOLS)
    assert sp.id_to_piece(13) == "<0x00>" and sp.id_to_piece(268) == "<0xFF>"
    # a chat symbol is one piece wherever it stands, even glued to text
    for i, symbol in enumerate(CHAT_SYMBOLS, 6):
        ids = tokenizer.encode(f"ab{symbol}cd")
        assert ids.count(i) == 1 and tokenizer.decode(ids) == f"ab{symbol}cd"
    special = special_ids(tokenizer.num_tokens)
    a, b = tokenizer.encode("first doc"), tokenizer.encode(" second\n")
    ids = [special.bos, *a, tokenizer.eos_id, *b, tokenizer.eos_id, special.mask, special.pad]
    assert tokenizer.decode(ids) == "first doc second\n"
    assert tokenizer.decode(np.asarray(ids, np.int32)) == "first doc second\n"
    with pytest.raises(ValueError, match="-1"):
        tokenizer.decode([5, -1])


def test_pickle_is_lazy_and_identical(tokenizer):
    docs = list(embedded_corpus("validation"))
    clone = pickle.loads(pickle.dumps(tokenizer))
    assert clone._sp is None  # the processor is rebuilt on first use, in the new process
    assert len(pickle.dumps(tokenizer)) < len(tokenizer.model_bytes) + 1000
    assert clone.encode_batch(docs) == tokenizer.encode_batch(docs)
    assert clone == tokenizer and clone.sha256 == tokenizer.sha256


def test_save_load(tokenizer, tmp_path):
    path = tokenizer.save(tmp_path / "sub" / "copy.model")
    loaded = Tokenizer.load(path)
    assert loaded.model_bytes == tokenizer.model_bytes
    assert loaded.encode("hello  world\n") == tokenizer.encode("hello  world\n")


def test_training_is_deterministic(tokenizer, tokenizer_path, tmp_path):
    again = Tokenizer.train(embedded_corpus("train"), 3000, tmp_path / "a.model", seed=0)
    assert again.model_bytes == tokenizer.model_bytes == tokenizer_path.read_bytes()
    docs = list(embedded_corpus("train"))[:600]
    u1 = Tokenizer.train(docs, 800, model_type="unigram", seed=3)
    u2 = Tokenizer.train(docs, 800, model_type="unigram", seed=3)
    assert u1.sha256 == u2.sha256
    assert u1.sha256 != Tokenizer.train(docs, 700, model_type="unigram", seed=3).sha256
    assert all(u1.decode(u1.encode(t)) == t for t in AWKWARD)


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.model"):
        Tokenizer.load(tmp_path / "missing.model")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.model"):
        Tokenizer.load(tmp_path / "junk.model")
    docs = ["hello world, a small corpus."] * 20
    with pytest.raises(ValueError, match="vocab_size=100"):
        Tokenizer.train(docs, 100)
    with pytest.raises(ValueError, match="vocab_size=50000"):
        Tokenizer.train(docs, 50000)
    with pytest.raises(ValueError, match="empty corpus"):
        Tokenizer.train([], 300)
    with pytest.raises(ValueError, match="empty corpus"):
        Tokenizer.train(["", "\n\n"], 300)
    with pytest.raises(ValueError, match="wordpiece"):
        Tokenizer.train(docs, 300, model_type="wordpiece")
    with pytest.raises(TypeError, match="bytes"):
        Tokenizer.train([b"bytes"], 300)
