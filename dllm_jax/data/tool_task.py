"""A synthetic tool-use task, generated in code (no download).

Three kinds of question, each with its reference conversation in the chat format
(``dllm_jax.data.chat``):

* arithmetic on numbers too large to do in the head (sums of 4-5 digit numbers, products
  of 3-digit numbers), asked plainly or as a one-line word problem: the assistant calls the
  ``add`` or ``multiply`` tool and answers with its result;
* look-ups in a random price table of ``TABLE_SIZE`` made-up item names: the assistant
  calls ``lookup``;
* questions that need no tool (one-digit sums and products, greetings): answered directly.

A share of tool questions (``UNAVAILABLE_SHARE``) is answered with the tools switched off:
the call's result is ``tools.UNAVAILABLE`` and the assistant answers directly, with the
true answer. So the same model can be asked to answer without its tools, and its accuracy
then is the baseline the tools are measured against.

Splits are drawn from disjoint seeds (``SPLIT_SEEDS``); the table depends on ``seed`` only,
so every split shares it (as a deployed tool would).
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np

from dllm_jax.data.chat import write_conversations
from dllm_jax.tools import UNAVAILABLE, Registry, Tool

TABLE_SIZE = 200
UNAVAILABLE_SHARE = 0.1
SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}
KIND_SHARES = {"add": 0.2, "multiply": 0.2, "lookup": 0.25, "direct": 0.35}

_ADD = ("What is {a} plus {b}?", "A farm has {a} sheep and buys {b} more. How many sheep are there now?")
_MUL = ("What is {a} times {b}?", "Each box holds {a} pens. How many pens are in {b} boxes?")
_LOOKUP = ("What is the price of {key}?", "How much does {key} cost?")
_DIRECT = ("What is {a} plus {b}?", "What is {a} times {b}?")
_GREETINGS = (("Hello!", "Hello! How can I help?"), ("Thank you.", "You are welcome."),
              ("Who are you?", "I am a small diffusion model."))


def price_table(seed: int = 0) -> dict[str, int]:
    """``TABLE_SIZE`` made-up item names (four letters) and their prices (100..999)."""
    rng = np.random.default_rng([seed, 7919])
    table: dict[str, int] = {}
    while len(table) < TABLE_SIZE:
        name = "".join(rng.choice(list(string.ascii_lowercase), 4))
        table.setdefault(name, int(rng.integers(100, 1000)))
    return table


def registry(seed: int = 0) -> Registry:
    """The task's tools: ``add``, ``multiply`` (integers) and ``lookup`` (the price table)."""
    table = price_table(seed)

    def lookup(key: str) -> str:
        if key not in table:
            raise KeyError(f"no item named {key!r}")
        return str(table[key])

    return Registry([
        Tool("add", lambda a, b: a + b, {"a": "integer", "b": "integer"}, "a + b"),
        Tool("multiply", lambda a, b: a * b, {"a": "integer", "b": "integer"}, "a * b"),
        Tool("lookup", lookup, {"key": "string"}, "the price of an item"),
    ])


def _tool_conversation(question: str, name: str, arguments: dict, answer: str, unavailable: bool) -> list[dict]:
    result = UNAVAILABLE if unavailable else answer
    return [{"role": "user", "content": question},
            {"role": "assistant", "content": "", "tool_call": {"name": name, "arguments": arguments}},
            {"role": "tool", "content": result},
            {"role": "assistant", "content": answer}]


def conversation(rng: np.random.Generator, table: dict[str, int]) -> list[dict]:
    """One reference conversation of a kind drawn by ``KIND_SHARES``."""
    kind = rng.choice(list(KIND_SHARES), p=list(KIND_SHARES.values()))
    unavailable = bool(rng.random() < UNAVAILABLE_SHARE)
    if kind == "add":
        a, b = (int(x) for x in rng.integers(1000, 100_000, 2))
        q = _ADD[rng.integers(len(_ADD))].format(a=a, b=b)
        return _tool_conversation(q, "add", {"a": a, "b": b}, str(a + b), unavailable)
    if kind == "multiply":
        a, b = (int(x) for x in rng.integers(100, 1000, 2))
        q = _MUL[rng.integers(len(_MUL))].format(a=a, b=b)
        return _tool_conversation(q, "multiply", {"a": a, "b": b}, str(a * b), unavailable)
    if kind == "lookup":
        key = list(table)[rng.integers(len(table))]
        q = _LOOKUP[rng.integers(len(_LOOKUP))].format(key=key)
        return _tool_conversation(q, "lookup", {"key": key}, str(table[key]), unavailable)
    if rng.random() < 0.2:
        q, answer = _GREETINGS[rng.integers(len(_GREETINGS))]
    else:
        op = rng.integers(len(_DIRECT))
        a, b = (int(x) for x in rng.integers(0, 10, 2))
        q, answer = _DIRECT[op].format(a=a, b=b), str(a + b if op == 0 else a * b)
    return [{"role": "user", "content": q}, {"role": "assistant", "content": answer}]


def conversations(split: str, count: int, seed: int = 0) -> list[list[dict]]:
    """``count`` reference conversations of ``split`` (train / validation / test)."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {tuple(SPLIT_SEEDS)}, got {split!r}")
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    rng = np.random.default_rng([seed, SPLIT_SEEDS[split]])
    table = price_table(seed)
    return [conversation(rng, table) for _ in range(count)]


def write_task(directory: str | Path, sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Write ``<directory>/{train,validation,test}.jsonl`` (a ``chat:<directory>`` source)."""
    sizes = {"train": 4000, "validation": 200, "test": 300} if sizes is None else sizes
    directory = Path(directory)
    for split, count in sizes.items():
        write_conversations(directory / f"{split}.jsonl", conversations(split, count, seed))
    return directory


def reference(messages: list[dict]) -> tuple[str, dict | None]:
    """(the reference answer, the reference call or None) of a task conversation."""
    call = next((m["tool_call"] for m in messages if m.get("tool_call")), None)
    return messages[-1]["content"], call
