"""Sources of documents: an embedded corpus, local text files, and TFDS datasets.

A *source* is a read-only sequence of documents (``str``) with ``__len__`` and
``__getitem__``; the pipeline only ever uses those two. Every source here is deterministic:
the same documents in the same order on every run.

Train/validation split rule (embedded and local sources): a document goes to validation
when ``sha256(name) mod 10_000 < 10_000 * VALIDATION_FRACTION``, where ``name`` is a stable
name of the document (a qualified Python name, or a relative path). The split therefore does
not depend on the order of documents, on the machine, or on the other documents.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

from dllm_jax.data.chat import ChatSource
from dllm_jax.data.stdlib_text import stdlib_documents

SPLITS = ("train", "validation", "all")
VALIDATION_FRACTION = 0.02

# Folder walks in ``local_text`` keep these suffixes; explicit file paths are always kept.
TEXT_SUFFIXES = (".txt", ".md", ".rst")
# Files larger than this are cut into blocks of whole blank-line-separated paragraphs.
MAX_DOCUMENT_BYTES = 1 << 20


def _check_split(split: str, allowed: Sequence[str] = SPLITS) -> None:
    if split not in allowed:
        raise ValueError(f"split must be one of {tuple(allowed)}, got {split!r}")


def in_validation(name: str, fraction: float = VALIDATION_FRACTION) -> bool:
    """Whether the document called ``name`` belongs to the validation split."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < round(10_000 * fraction)


def _keep(name: str, split: str) -> bool:
    return split == "all" or in_validation(name) == (split == "validation")


@dataclasses.dataclass(frozen=True)
class TextCorpus:
    """Documents held in memory, each with a stable name.

    Attributes:
      names: one stable name per document (used for ordering and the split rule).
      texts: the documents.
    """

    names: tuple[str, ...]
    texts: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> str:
        return self.texts[index]

    def __iter__(self):
        return iter(self.texts)

    @property
    def num_chars(self) -> int:
        return sum(len(t) for t in self.texts)

    @property
    def num_bytes(self) -> int:
        """UTF-8 size of all documents together."""
        return sum(len(t.encode("utf-8")) for t in self.texts)


# --------------------------------------------------------------------------- embedded


@functools.cache
def embedded_corpus(split: str = "train") -> TextCorpus:
    """Human-written English shipped with every Python: the standard library's docstrings.

    Documents are the docstrings of stdlib modules, classes and functions (read from the
    source with ``ast``; tests, GUI and vendored trees left out), of ``builtins``, and the
    ``pydoc_data.topics`` language-reference pages; cleaned with ``inspect.cleandoc``,
    sorted by qualified name, deduplicated by text (the first name wins). No download and no
    extra package. Identical on every machine with the same Python version (about 2 MB and
    ~7,000 documents on CPython 3.11); it differs between Python versions.

    Args:
      split: ``"train"``, ``"validation"`` (~2% of documents, by a hash of each name) or
        ``"all"``.

    Returns:
      A ``TextCorpus``; the extraction is cached in memory.
    """
    _check_split(split)
    names, texts = stdlib_documents()
    keep = [i for i, name in enumerate(names) if _keep(name, split)]
    return TextCorpus(tuple(names[i] for i in keep), tuple(texts[i] for i in keep))


# --------------------------------------------------------------------------- local files

_BLANK_LINE = re.compile(rb"\n[ \t\r]*\n")


def _blocks(data: bytes, max_bytes: int) -> list[tuple[int, int]]:
    """Cut ``data`` after blank lines into (start, end) blocks of at most ~``max_bytes``.

    Blocks tile ``data`` exactly (their concatenation is ``data``); a single paragraph longer
    than ``max_bytes`` stays whole.
    """
    cuts = [m.end() for m in _BLANK_LINE.finditer(data)] + [len(data)]
    blocks, start, last = [], 0, 0
    for cut in cuts:
        if cut - start > max_bytes and last > start:
            blocks.append((start, last))
            start = last
        last = cut
    if len(data) > start:
        blocks.append((start, len(data)))
    return blocks


@dataclasses.dataclass(frozen=True)
class LocalText:
    """Documents read lazily from local files: (path, byte range) per document.

    Attributes:
      names: stable names (``relative/path`` or ``relative/path#block``).
      spans: ``(path, start, end)`` byte ranges, one per document.
    """

    names: tuple[str, ...]
    spans: tuple[tuple[str, int, int], ...]

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, index: int) -> str:
        path, start, end = self.spans[index]
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text ({e})") from None


def _files(path: Path) -> list[tuple[str, Path]]:
    """(stable name, file) pairs under ``path``, sorted by name."""
    if path.is_file():
        return [(path.name, path)]
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES]
        return sorted((p.relative_to(path).as_posix(), p) for p in found)
    raise FileNotFoundError(f"local text path {str(path)!r} does not exist")


def local_text(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    split: str = "train",
    max_document_bytes: int = MAX_DOCUMENT_BYTES,
) -> LocalText:
    """Documents from local UTF-8 text files or folders.

    One document per file. A file larger than ``max_document_bytes`` is cut after blank
    lines into blocks of whole paragraphs (each block a document), so that one huge file
    still yields many documents and a validation split. Folders are walked recursively for
    ``*.txt``, ``*.md`` and ``*.rst``; paths given explicitly are read whatever their suffix.
    Order: paths in the given order, files within a folder sorted by relative path. Names
    (for the split rule) are relative to the folder given (a file's own name for a file), so
    the split does not depend on where the data lives. Text is read exactly (newline="").

    Args:
      paths: one path or a sequence of paths (files or folders).
      split: ``"train"``, ``"validation"`` or ``"all"``.
      max_document_bytes: size above which a file is cut into paragraph blocks.

    Raises:
      FileNotFoundError: a path does not exist (the message names it).
      ValueError: bad split, or no (non-empty) document in this split.
    """
    _check_split(split)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    names, spans, total = [], [], 0
    for root in paths:
        for name, file in _files(Path(root)):
            size = file.stat().st_size
            if size <= max_document_bytes:
                blocks = [(0, size)] if size else []
            else:
                blocks = _blocks(file.read_bytes(), max_document_bytes)
            total += len(blocks)
            for k, (start, end) in enumerate(blocks):
                doc_name = name if len(blocks) == 1 else f"{name}#{k}"
                if _keep(doc_name, split):
                    names.append(doc_name)
                    spans.append((str(file), start, end))
    if not spans:
        hint = ""
        if split == "validation" and total:
            hint = (
                f": the {total} document(s) found all fell in the training split (a document goes to "
                f"validation when a hash of its name falls in the first {VALIDATION_FRACTION:.0%}; a file "
                f"up to {max_document_bytes:,} bytes is one document). Give a folder of many files or "
                "a larger file (it is cut into paragraph blocks)"
            )
        raise ValueError(
            f"no non-empty text documents in split {split!r} of {list(map(str, paths))}{hint}"
        )
    return LocalText(tuple(names), tuple(spans))


# --------------------------------------------------------------------------- TFDS


class TfdsText:
    """A TFDS split read with ``tfds.data_source`` (array_record, random access, no TF).

    Each item's ``feature`` (bytes) is decoded as UTF-8.
    """

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str | None = None,
        feature: str = "text",
        download: bool = False,
    ):
        import tensorflow_datasets as tfds  # lazy: the GPU image has no TFDS

        self.name, self.split, self.feature = name, split, feature
        where = f"under data_dir {data_dir!r}" if data_dir else "in TFDS's default data_dir"
        if data_dir and not Path(data_dir).is_dir() and not download:
            raise FileNotFoundError(f"TFDS data_dir {data_dir!r} (for dataset {name!r}) does not exist")
        try:
            self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
        except tfds.core.registered.DatasetNotFoundError:
            raise ValueError(
                f"TFDS knows no dataset {name!r}: it is neither a registered TFDS name nor prepared {where} "
                "(local text becomes one with dllm_jax.data.tfds_builder.build_local_tfds)"
            ) from None
        except NotImplementedError as e:  # prepared in another format, or only partly
            first = str(e).splitlines()[0]
            raise ValueError(
                f"TFDS dataset {name!r} is not prepared in array_record format {where} ({first}); prepare it "
                f"with `tfds build {name} --file_format=array_record` or point data_dir at such a copy"
            ) from None
        features = getattr(self._source.dataset_info, "features", None)
        if features is not None and feature not in features:
            raise ValueError(
                f"TFDS dataset {name!r} has no feature {feature!r}; it has {sorted(features)}"
            )

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> str:
        value = self._source[index][self.feature]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def tfds_text(
    name: str,
    split: str = "train",
    data_dir: str | None = None,
    feature: str = "text",
    download: bool = False,
) -> TfdsText:
    """Any TFDS text dataset, by name (e.g. ``"lm1b"``, ``"local_text_corpus"``).

    By default the dataset must already be prepared in array_record format under
    ``data_dir`` (nothing is fetched behind the user's back); ``download=True`` lets TFDS
    download and prepare it. ``tensorflow_datasets`` is imported here, not at module import.

    Args:
      name: TFDS name, optionally with config/version (``"wiki40b/en:1.3.0"``).
      split: a TFDS split expression (``"train"``, ``"validation"``, ``"train[:1%]"`` ...).
      data_dir: TFDS data directory (default: TFDS's own, ``~/tensorflow_datasets``).
      feature: the text feature to read.
      download: allow TFDS to download and prepare a missing dataset.

    Raises:
      ValueError: the dataset has no such feature. TFDS's own errors (unknown dataset,
        not prepared, unknown split) pass through.
    """
    return TfdsText(name, split, data_dir, feature, download)


def make_source(spec: str, split: str = "train") -> Sequence[str]:
    """A source from a string spec.

    Specs: ``"embedded"``; ``"local:<path>[,<path>...]"``; ``"chat:<dir>"`` (a
    ``ChatSource`` of ``<dir>/<split>.jsonl``); ``"tfds:<name>"`` or
    ``"tfds:<name>@<data_dir>"`` (TFDS split names are passed through as given).

    Raises:
      ValueError: unknown spec (the message names it and lists the forms).
    """
    if spec == "embedded":
        return embedded_corpus(split)
    if spec.startswith("local:") and spec[len("local:") :]:
        return local_text([p for p in spec[len("local:") :].split(",") if p], split)
    if spec.startswith("chat:") and spec[len("chat:") :]:
        return ChatSource(spec[len("chat:") :], split)
    if spec.startswith("tfds:") and spec[len("tfds:") :]:
        name, _, data_dir = spec[len("tfds:") :].partition("@")
        return tfds_text(name, split, data_dir or None)
    raise ValueError(
        f"unknown data source spec {spec!r}; expected 'embedded', 'local:<path>[,<path>...]', "
        "'chat:<dir>' (conversations in <dir>/<split>.jsonl) or 'tfds:<name>[@<data_dir>]'"
    )
