"""Puts ``tests/`` on ``sys.path`` so test modules can import shared helpers such as
``oracle_reference`` whichever directory pytest is started from, and shares one XLA
compilation cache between the test processes of a session (the same tiny programs are
compiled by many tests and by the subprocesses they start)."""

import os
import sys
import tempfile

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

# Set before JAX is imported (here and in every subprocess, which inherits the environment).
# A fresh directory per session unless the caller chose one; results are bitwise the same
# with or without it (the cache stores compiled executables, keyed by the program).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="dllm_jax_xla_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
