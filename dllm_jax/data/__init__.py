"""Data: tokenizers, sources, packing, global batches.

``dllm_jax.data.tfds_builder`` (which imports ``tensorflow_datasets``) is not imported here,
so the package works where TFDS is not installed.
"""

from dllm_jax.data.corpus import (
    LocalText,
    TextCorpus,
    embedded_corpus,
    local_text,
    make_source,
    tfds_text,
)
from dllm_jax.data.pipeline import Example, GlobalBatches, PackedSequences
from dllm_jax.data.synthetic import MarkovChain, batches
from dllm_jax.data.tokenizer import Tokenizer

__all__ = [
    "Example",
    "GlobalBatches",
    "LocalText",
    "MarkovChain",
    "PackedSequences",
    "TextCorpus",
    "Tokenizer",
    "batches",
    "embedded_corpus",
    "local_text",
    "make_source",
    "tfds_text",
]
