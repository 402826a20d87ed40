"""Shared fixtures for the data tests: one tokenizer trained on the embedded corpus."""

import time

import pytest

from dllm_jax.data import Tokenizer, embedded_corpus

VOCAB_SIZE = 3000


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer") / "embedded_bpe.model"
    start = time.perf_counter()
    Tokenizer.train(embedded_corpus("train"), VOCAB_SIZE, path, model_type="bpe", seed=0)
    print(f"tokenizer training (incl. corpus extraction): {time.perf_counter() - start:.2f}s")
    return path


@pytest.fixture(scope="session")
def tokenizer(tokenizer_path):
    return Tokenizer.load(tokenizer_path)
