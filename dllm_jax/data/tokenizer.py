"""A lossless sentencepiece tokenizer: ``decode(encode(text)) == text`` for any text.

Ids. Sentencepiece's own pieces are the library's *ordinary* tokens, ids
``[0, num_tokens)`` with ``num_tokens`` = the sentencepiece vocabulary size. In a model
trained here: ``unk=0``, ``<s>=1``, ``</s>=2`` (``eos_id``, appended after each document by
the pipeline and predicted like any token), ``"\\n"=3``, ``"\\r"=4``, ``"\\t"=5``, the seven
chat symbols of ``dllm_jax.data.chat`` (``<|user|>`` ... ``<|end|>``) = 6..12, never split, the
256 byte pieces ``<0x00>..<0xFF>`` = 13..268, then the learned pieces. The library's specials
(pad, bos, mask; ``dllm_jax.config.special_ids``) follow at ``num_tokens + {0, 1, 2}``; they
are not sentencepiece pieces and ``decode`` drops them.

Why lossless: identity normalisation, no dummy prefix, no whitespace folding, byte fallback
for every character not in the vocabulary, newline/CR/tab as user-defined pieces. The one
character sentencepiece cannot carry is its own whitespace marker U+2581 (it decodes to a
space); ``encode`` emits it as its three UTF-8 byte pieces instead.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from dllm_jax.data.chat import CHAT_SYMBOLS
from dllm_jax.files import write_atomic

MODEL_TYPES = ("bpe", "unigram")
_WHITESPACE_MARK = "\u2581"  # sentencepiece's escaped space
_USER_SYMBOLS = ("\n", "\r", "\t", *CHAT_SYMBOLS)
_MAX_LINE_CHARS = 4096  # training lines are cut to this; encoding takes any length


def _training_lines(texts: Iterable[str]) -> Iterator[str]:
    """Training sentences: each text cut at newlines (the newline is its own piece) and
    into chunks of at most ``_MAX_LINE_CHARS`` characters."""
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"training texts must be str, got {type(text).__name__}")
        for line in text.split("\n"):
            for start in range(0, len(line), _MAX_LINE_CHARS):
                yield line[start : start + _MAX_LINE_CHARS]


class TokenizerBase:
    """What every tokenizer here shares: equality by fingerprint, ``encode`` of one text,
    the id check of ``decode``. Subclasses define ``sha256``, ``encode_batch`` and ``decode``."""

    sha256: str

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.sha256 == self.sha256

    def __hash__(self) -> int:
        return hash(self.sha256)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, all in ``[0, num_tokens)``; no bos/eos added."""
        return self.encode_batch([text])[0]

    @staticmethod
    def checked_ids(ids: Iterable[int]) -> list[int]:
        """``ids`` as ints (a list or a 1-D integer array); ``ValueError`` on a negative id."""
        ids = [int(i) for i in ids]
        if any(i < 0 for i in ids):
            raise ValueError(f"token ids must be >= 0, got {min(ids)}")
        return ids


# sentencepiece settings that make the tokenizer lossless and deterministic (see ``train``)
_TRAINER_OPTIONS = dict(
    normalization_rule_name="identity",
    add_dummy_prefix=False,
    remove_extra_whitespaces=False,
    split_by_whitespace=True,
    allow_whitespace_only_pieces=True,
    byte_fallback=True,
    user_defined_symbols=list(_USER_SYMBOLS),
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
    input_sentence_size=0,
    shuffle_input_sentence=False,
    max_sentence_length=4 * _MAX_LINE_CHARS,
    minloglevel=2,
)


def _sentences(texts: Iterable[str]):
    """The non-empty training lines of ``texts``; an empty corpus is refused up front."""
    lines = _training_lines(texts)
    first = next((line for line in lines if line), None)
    if first is None:
        raise ValueError("cannot train a tokenizer on an empty corpus (no non-empty text)")
    return (line for chain in ([first], lines) for line in chain if line)


class Tokenizer(TokenizerBase):
    """A sentencepiece model held as bytes; the processor is built lazily on first use.

    Pickling stores only the serialized model (a few hundred KB), so the tokenizer can be
    shipped to worker processes, which build their own processor when they first encode.

    Attributes:
      model_bytes: the serialized sentencepiece ``ModelProto``.
    """

    def __init__(self, model_bytes: bytes):
        """Wrap a serialized model; raises ``ValueError`` if it is not a valid model."""
        if not isinstance(model_bytes, (bytes, bytearray)) or not model_bytes:
            raise ValueError("Tokenizer needs the non-empty bytes of a sentencepiece model")
        self.model_bytes = bytes(model_bytes)
        self._sp: spm.SentencePieceProcessor | None = None
        try:
            self.processor  # noqa: B018 -- validate now; pickles still rebuild lazily
        except RuntimeError as e:
            raise ValueError(f"not a valid sentencepiece model: {e}") from None
        if self.eos_id < 0:
            raise ValueError("the sentencepiece model has no eos piece (eos_id=-1)")

    # ------------------------------------------------------------------ construction

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        path: str | os.PathLike | None = None,
        model_type: str = "bpe",
        seed: int = 0,
        character_coverage: float = 0.9995,
        num_threads: int = 1,
    ) -> Tokenizer:
        """Train a lossless tokenizer on ``texts`` and save it to ``path`` (if given).

        Deterministic: the same texts (in the same order), settings and seed give a
        byte-identical model. ``num_threads`` is recorded in the model, so keep it fixed
        (default 1; BPE on ~2 MB takes well under a second, unigram a few seconds).

        Args:
          texts: documents; any iterable of ``str`` (e.g. a corpus source), read once.
          vocab_size: number of sentencepiece pieces = ``num_tokens``; at least the 262
            fixed pieces plus the corpus's required characters.
          path: where to write the model file (parent folders are created).
          model_type: ``"bpe"`` or ``"unigram"``.
          seed: sentencepiece's random generator seed.
          character_coverage: share of characters that get their own piece; the rest are
            spelled with byte pieces.
          num_threads: trainer threads.

        Raises:
          ValueError: bad ``model_type``, empty corpus, or a ``vocab_size`` the corpus
            cannot support (sentencepiece's message is included).
        """
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
        buffer = io.BytesIO()
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_sentences(texts), model_writer=buffer, vocab_size=vocab_size,
                model_type=model_type, character_coverage=character_coverage, num_threads=num_threads,
                **_TRAINER_OPTIONS)
        except RuntimeError as e:
            raise ValueError(
                f"sentencepiece could not train a {model_type} model with vocab_size="
                f"{vocab_size} on this corpus: {e}"
            ) from None
        tokenizer = cls(buffer.getvalue())
        if path is not None:
            tokenizer.save(path)
        return tokenizer

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a model file written by ``save`` / ``train``.

        Raises:
          FileNotFoundError: no file at ``path`` (the message names it).
          ValueError: the file is not a sentencepiece model.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer model file at {str(path)!r}")
        try:
            return cls(path.read_bytes())
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"{str(path)!r} is not a sentencepiece model: {e}") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model bytes to ``path`` (atomically: never a half-written model); returns the path."""
        return write_atomic(path, self.model_bytes)

    # ------------------------------------------------------------------ lazy processor

    @property
    def processor(self) -> spm.SentencePieceProcessor:
        if self._sp is None:
            sp = spm.SentencePieceProcessor()
            sp.LoadFromSerializedProto(self.model_bytes)
            self._sp = sp
        return self._sp

    def __getstate__(self) -> dict:
        return {"model_bytes": self.model_bytes}

    def __setstate__(self, state: dict) -> None:
        self.model_bytes = state["model_bytes"]
        self._sp = None

    def __repr__(self) -> str:
        return f"Tokenizer(num_tokens={self.num_tokens}, sha256={self.sha256[:12]}...)"

    # ------------------------------------------------------------------ ids

    @property
    def num_tokens(self) -> int:
        """Ordinary ids ``[0, num_tokens)``: the sentencepiece vocabulary size."""
        return self.processor.get_piece_size()

    @property
    def eos_id(self) -> int:
        return self.processor.eos_id()

    @property
    def sha256(self) -> str:
        """Hex fingerprint of the model, for checkpoint compatibility checks."""
        return hashlib.sha256(self.model_bytes).hexdigest()

    # ------------------------------------------------------------------ encode / decode

    def _mark_ids(self) -> list[int]:
        return [self.processor.piece_to_id(f"<0x{b:02X}>") for b in _WHITESPACE_MARK.encode()]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` for many texts at once."""
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"encode expects str, got {type(text).__name__}")
        out = self.processor.encode(list(texts), out_type=int)
        for i, text in enumerate(texts):
            if _WHITESPACE_MARK in text:
                parts = self.processor.encode(text.split(_WHITESPACE_MARK), out_type=int)
                mark, ids = self._mark_ids(), list(parts[0])
                for part in parts[1:]:
                    ids += mark + part
                out[i] = ids
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special ids ``>= num_tokens`` (pad, bos, mask) are dropped.

        Accepts a list or a 1-D integer array. Raises ``ValueError`` on a negative id.
        """
        ids = self.checked_ids(ids)
        n = self.num_tokens
        return self.processor.decode([i for i in ids if i < n])
