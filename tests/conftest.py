"""Puts ``tests/`` on ``sys.path`` so test modules can import shared helpers such as
``oracle_reference`` whichever directory pytest is started from."""

import os
import sys

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)
