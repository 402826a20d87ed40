"""A Hugging Face ``tokenizer.json`` behind the interface of our sentencepiece ``Tokenizer``.

Ids. The file's ids (its own special tokens included, e.g. ``<|endoftext|>``) are ordinary
ids ``[0, num_tokens)``, where ``num_tokens`` is the *model's* vocabulary (a checkpoint may
pad its embedding past the tokenizer: Qwen2.5 has 151,665 tokens and 151,936 rows). Our pad,
bos and mask follow at ``num_tokens + {0, 1, 2}`` (``dllm_jax.config.special_ids``), as for
every model here; ``decode`` drops every id the file does not know. The end-of-text id
comes from ``tokenizer_config.json``'s ``eos_token``, else the model's ``config.json`` /
``generation_config.json`` ``eos_token_id``.

``encode`` adds no special tokens (no bos, no template): the text's own ids, as
``transformers``' ``tokenizer(text, add_special_tokens=False)`` gives them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as _Backend

from dllm_jax.data.tokenizer import Tokenizer, TokenizerBase
from dllm_jax.files import read_json, write_atomic

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"


class HFTokenizer(TokenizerBase):
    """A ``tokenizers`` model held as its JSON text; pickles as the text.

    Attributes:
      json_text: the ``tokenizer.json`` contents.
    """

    def __init__(self, json_text: str, num_tokens: int | None = None, eos_id: int | None = None):
        try:
            self._backend = _Backend.from_str(json_text)
        except Exception as e:  # the Rust side raises a bare Exception
            raise ValueError(f"not a valid tokenizer.json: {e}") from None
        self.json_text = json_text
        size = self._backend.get_vocab_size(with_added_tokens=True)
        self.file_tokens = size
        self._num_tokens = size if num_tokens is None else int(num_tokens)
        if self._num_tokens < size:
            raise ValueError(
                f"the tokenizer has {size} tokens but the model's vocabulary has {self._num_tokens}: "
                "they do not belong together"
            )
        if eos_id is None or not 0 <= eos_id < size:
            raise ValueError(f"HFTokenizer needs an eos id in [0, {size}), got {eos_id!r}")
        self._eos_id = int(eos_id)

    @classmethod
    def load(cls, path: str | os.PathLike, num_tokens: int | None = None) -> HFTokenizer:
        """From a folder holding ``tokenizer.json`` (or the file itself); the eos token from
        ``tokenizer_config.json`` or the model's config files beside it.

        Raises:
          FileNotFoundError: no tokenizer.json (the message names the path).
          ValueError: not a tokenizer file, no eos token, or more tokens than ``num_tokens``.
        """
        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no {TOKENIZER_FILE} at {str(path)!r}")
        text = file.read_text()
        try:
            backend = _Backend.from_str(text)
        except Exception as e:
            raise ValueError(f"{file} is not a tokenizers file: {e}") from None
        eos = _eos_id(file.parent, backend)
        if eos is None:
            raise ValueError(f"{file.parent}: no eos token ({CONFIG_FILE} eos_token or config.json eos_token_id)")
        try:
            return cls(text, num_tokens, eos)
        except ValueError as e:
            raise ValueError(f"{file}: {e}") from None

    def save_hf(self, folder: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` and a ``tokenizer_config.json`` naming the eos token (what
        ``transformers.AutoTokenizer`` reads) into ``folder``; returns the json path."""
        folder = Path(folder)
        eos = self._backend.id_to_token(self._eos_id)
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos}
        if (folder / CONFIG_FILE).is_file():
            config = {**read_json(folder / CONFIG_FILE), **config}
        write_atomic(folder / CONFIG_FILE, json.dumps(config, indent=2))
        return write_atomic(folder / TOKENIZER_FILE, self.json_text)

    def __getstate__(self) -> dict:
        return {"json_text": self.json_text, "num_tokens": self._num_tokens, "eos_id": self._eos_id}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["json_text"], state["num_tokens"], state["eos_id"])

    def __repr__(self) -> str:
        return f"HFTokenizer(num_tokens={self.num_tokens}, eos_id={self.eos_id}, sha256={self.sha256[:12]}...)"

    @property
    def num_tokens(self) -> int:
        """Ordinary ids ``[0, num_tokens)``: the model's vocabulary (>= the file's tokens)."""
        return self._num_tokens

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def sha256(self) -> str:
        """Fingerprint of the file, the vocabulary size and the eos id."""
        key = f"{self._num_tokens}:{self._eos_id}:".encode() + self.json_text.encode()
        return hashlib.sha256(key).hexdigest()

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"encode expects str, got {type(text).__name__}")
        return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    def utf8_lengths(self) -> np.ndarray:
        """UTF-8 bytes each ordinary id contributes to decoded text, (num_tokens,) int64:
        special tokens and padding rows 0; a byte-level BPE's token one byte per character
        (GPT-2's byte-to-unicode map); otherwise byte-fallback pieces ``<0xNN>`` 1 and other
        pieces their text's length, the sentencepiece mark read as a space."""
        added = self._backend.get_added_tokens_decoder()
        decoder = json.loads(self.json_text).get("decoder")
        byte_level = '"ByteLevel"' in json.dumps(decoder)
        lengths = np.zeros(self._num_tokens, np.int64)
        for i in range(self.file_tokens):
            token = self._backend.id_to_token(i)
            if i in added:
                lengths[i] = 0 if added[i].special else len(added[i].content.encode())
            elif byte_level:
                lengths[i] = len(token)
            elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
                lengths[i] = 1
            else:
                lengths[i] = len(token.replace("\u2581", " ").encode())
        return lengths

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; ids the file does not know (our pad/bos/mask, padding rows) are dropped."""
        ids = self.checked_ids(ids)
        return self._backend.decode([i for i in ids if i < self.file_tokens], skip_special_tokens=False)


def _eos_id(folder: Path, backend: _Backend) -> int | None:
    config = folder / CONFIG_FILE
    if config.is_file():
        eos = read_json(config).get("eos_token")
        if isinstance(eos, dict):
            eos = eos.get("content")
        if isinstance(eos, str) and backend.token_to_id(eos) is not None:
            return backend.token_to_id(eos)
    return config_eos_id(folder)


def config_eos_id(folder: str | os.PathLike) -> int | None:
    """The model's ``eos_token_id`` (the first, if a list) from ``generation_config.json`` or
    ``config.json`` in ``folder``, or None."""
    for name in ("generation_config.json", "config.json"):
        file = Path(folder) / name
        if file.is_file():
            eos = read_json(file).get("eos_token_id")
            eos = eos[0] if isinstance(eos, list) and eos else eos
            if isinstance(eos, int):
                return eos
    return None


def load_tokenizer(path: str | os.PathLike, num_tokens: int | None = None):
    """Our sentencepiece ``Tokenizer`` for a ``.model`` file, an ``HFTokenizer`` for a
    ``tokenizer.json`` (or a folder holding one)."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".json":
        return HFTokenizer.load(path, num_tokens)
    return Tokenizer.load(path)
