"""Field checks shared by the configs: each raises ``ValueError`` naming the config, the
field, its value and what was expected."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Literal

import numpy as np


def is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def is_float(v) -> bool:
    return is_int(v) or isinstance(v, (float, np.floating))


def _matches(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if hint is int:
        return is_int(value)
    if hint is float:
        return is_float(value)
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if hint is str:
        return isinstance(value, str)
    if origin is Literal:
        return isinstance(value, str) and value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(value is None if a is type(None) else _matches(value, a) for a in typing.get_args(hint))
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, tuple) and all(_matches(v, item) for v in value)
    return True  # nested or unusual types are checked by the config itself


def _hint_text(hint) -> str:
    if typing.get_origin(hint) is Literal:
        return f"one of {typing.get_args(hint)}"
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return f"a tuple of {'integers, e.g. (8, 32)' if item is int else 'numbers, e.g. (0.1, 0.5)'}"
    return {int: "an integer", float: "a number", bool: "True or False", str: "a string"}.get(
        hint, str(hint).replace("typing.", "")
    )


def check_types(obj) -> None:
    """Every field has its annotated type: ``train.lr='abc'`` is refused by name, up front."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not _matches(value, hints[f.name]):
            raise ValueError(
                f"{type(obj).__name__}.{f.name} must be {_hint_text(hints[f.name])}, got {value!r}"
            )


def check_seed(obj, name: str) -> None:
    value = getattr(obj, name)
    if not 0 <= value < 2**32:
        raise ValueError(
            f"{type(obj).__name__}.{name} must be in [0, 2**32) (larger seeds would wrap onto "
            f"smaller ones), got {value}"
        )


def positive_int(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(
                f"{type(obj).__name__}.{name} must be a positive integer, got {value!r}"
            )


def one_of(obj, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in allowed:
        raise ValueError(
            f"{type(obj).__name__}.{name} must be one of {allowed}, got {value!r}"
        )


def number(obj, name: str) -> float:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{type(obj).__name__}.{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{type(obj).__name__}.{name} must be finite, got {value!r}")
    return float(value)


def check_tokens(tokens, num_tokens_total: int, name: str = "tokens") -> None:
    """Raise if a concrete array holds an id outside ``[0, num_tokens_total)``.

    Embedding lookups inside jit do not fail on a bad id (the gather clamps or fills), so
    ids are checked here, at eager boundaries (data loading, prompts, user input). Pass the
    model's ``ModelConfig.vocab_size`` (ordinary tokens + specials). Not for use under jit.

    Args:
      tokens: integer numpy or jax array of any shape, concrete.
      num_tokens_total: number of valid ids; ids must be in ``[0, num_tokens_total)``.
      name: what the array is called in the error message.

    Raises:
      TypeError: if ``tokens`` is not an integer array.
      ValueError: if ``num_tokens_total`` is not positive, or if any id is out of range
        (the message names the first offending value, its index and the allowed range).
    """
    if not isinstance(num_tokens_total, (int, np.integer)) or num_tokens_total < 1:
        raise ValueError(f"num_tokens_total must be a positive integer, got {num_tokens_total!r}")
    ids = np.asarray(tokens)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {ids.dtype}")
    bad = (ids < 0) | (ids >= num_tokens_total)
    if bad.any():
        index = np.unravel_index(int(np.argmax(bad)), ids.shape)
        raise ValueError(
            f"{name} holds id {int(ids[index])} at index {tuple(int(i) for i in index)}; "
            f"ids must be in [0, {num_tokens_total})"
        )
