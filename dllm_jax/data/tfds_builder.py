"""Local text files → a prepared TFDS dataset (array_record) with train/validation splits.

So the TFDS path (``tfds.data_source``, random access, no TensorFlow) runs for real without
a network: ``build_local_tfds(paths, data_dir)`` writes ``<data_dir>/<name>/1.0.0/`` and
``tfds_text(name, split, data_dir)`` (or the spec ``"tfds:<name>@<data_dir>"``) reads it
back. Documents and the split come from ``corpus.local_text``; each example is
``{"text": str}``, stored in the order ``local_text`` gives (no TFDS shuffling).

This module imports ``tensorflow_datasets`` at import time; nothing else in the library
imports it, so the rest works without TFDS installed.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import tensorflow_datasets as tfds

from dllm_jax.data.corpus import local_text

DEFAULT_NAME = "local_text_corpus"


class LocalTextBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder over local text files (one example per ``local_text`` document).

    Not registered in TFDS's global registry: a prepared dataset is read back from its
    files (``dataset_info.json`` + array_record shards), exactly as a fresh process would.
    """

    name = DEFAULT_NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Local text files, one document per example."}
    # No checksums file to look up (nothing is downloaded). TFDS would otherwise derive it
    # from the module's path, which needs the optional ``importlib_resources`` package.
    code_path = None

    def __init__(self, *, paths: Sequence[str | os.PathLike] = (), **kwargs):
        self._paths = [str(p) for p in paths]
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # A single-file builder has no metadata folder: dataset_info_from_configs fails.
        return tfds.core.DatasetInfo(
            builder=self,
            description="Local text files, one document per example.",
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
            # Keep the generation (document) order, so reading back is a faithful copy.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        if not self._paths:
            raise ValueError("LocalTextBuilder needs paths=... to prepare the dataset")
        return {
            "train": self._generate_examples("train"),
            "validation": self._generate_examples("validation"),
        }

    def _generate_examples(self, split: str):
        source = local_text(self._paths, split)
        for i in range(len(source)):
            yield i, {"text": source[i]}


@functools.cache
def _builder_class(name: str) -> type[LocalTextBuilder]:
    if name == DEFAULT_NAME:
        return LocalTextBuilder
    class_name = "".join(part.title() for part in name.split("_")) or "Local"
    return type(class_name, (LocalTextBuilder,), {"name": name}, skip_registration=True)


def build_local_tfds(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    data_dir: str | os.PathLike,
    name: str = DEFAULT_NAME,
) -> LocalTextBuilder:
    """Prepare ``<data_dir>/<name>`` from local text files, in array_record format.

    Args:
      paths: files or folders, as for ``corpus.local_text``.
      data_dir: TFDS data directory to write into.
      name: dataset name (snake_case); read back with ``tfds_text(name, split, data_dir)``.

    Returns:
      The prepared builder; ``builder.as_data_source(split)`` gives random access.

    Raises:
      ValueError: bad name, or a split with no documents (from ``local_text``).
      FileNotFoundError: a path does not exist.
    """
    if (
        not name
        or not name.replace("_", "").isalnum()
        or not name[0].isalpha()
        or name != name.lower()
    ):
        raise ValueError(f"TFDS dataset name must be snake_case, got {name!r}")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    builder = _builder_class(name)(paths=paths, data_dir=str(data_dir))
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
    return builder
