"""A tool runtime for chat models: a registry of Python functions with typed arguments, a
parser for the model's call text, and execution with a time limit.

Nothing the model writes is ever executed as code: a call is parsed as JSON
(``{"name": ..., "arguments": {...}}``, see ``dllm_jax.data.chat``), its name looked up in
the registry, its arguments checked against the tool's spec, and only then is the
registered function called with them. Every failure (text that is not JSON, an unknown
tool, missing, unknown or wrongly typed arguments, the tool raising, the tool running past
its time limit) becomes a ``Result`` with ``ok=False`` and an ``error: ...`` message for
the model to read, never an exception.

Time limit: the tool runs in a daemon thread; after ``timeout_s`` the call returns a
timeout error and the thread is abandoned (Python cannot kill a thread), so tools should
not hold resources that matter.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

TYPES = {"integer": (int,), "number": (int, float), "string": (str,), "boolean": (bool,)}
MAX_CALL_CHARS = 4096
MAX_RESULT_CHARS = 1024
UNAVAILABLE = "error: tools are unavailable"  # the result of any call when a chat runs without tools


@dataclasses.dataclass(frozen=True)
class Tool:
    """A function the model may call: ``params`` maps each argument name to a JSON type
    (``integer``, ``number``, ``string`` or ``boolean``); all are required."""

    name: str
    fn: Callable
    params: Mapping[str, str]
    description: str = ""
    timeout_s: float = 2.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"tool name must be an identifier, got {self.name!r}")
        for arg, kind in self.params.items():
            if kind not in TYPES:
                raise ValueError(f"tool {self.name!r}: argument {arg!r} has type {kind!r}, expected one of "
                                 f"{tuple(TYPES)}")
        if not (isinstance(self.timeout_s, (int, float)) and 0 < self.timeout_s < math.inf):
            raise ValueError(f"tool {self.name!r}: timeout_s must be a positive number, got {self.timeout_s!r}")


class Result(NamedTuple):
    """What a call gives back: ``content`` is what the model reads."""

    ok: bool
    content: str
    name: str | None = None
    arguments: dict | None = None


def _check_type(value, kind: str) -> bool:
    if isinstance(value, bool) and kind != "boolean":
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, TYPES[kind])


class Registry:
    """The tools a chat may call, by name."""

    def __init__(self, tools: Iterable[Tool]):
        self.tools: dict[str, Tool] = {}
        for tool in tools:
            if tool.name in self.tools:
                raise ValueError(f"two tools are named {tool.name!r}")
            self.tools[tool.name] = tool

    def parse(self, text: str) -> tuple[str, dict] | Result:
        """(name, arguments) of a call's JSON text, or an error ``Result``."""
        if len(text) > MAX_CALL_CHARS:
            return Result(False, f"error: the call is {len(text)} characters, more than {MAX_CALL_CHARS}")
        try:
            call = json.loads(text)
        except ValueError as e:  # JSONDecodeError, or an integer past Python's digit limit
            return Result(False, f"error: the call is not valid JSON ({getattr(e, 'msg', e)})")
        if not isinstance(call, dict) or set(call) != {"name", "arguments"}:
            return Result(False, 'error: a call must be {"name": ..., "arguments": {...}}')
        name, args = call["name"], call["arguments"]
        if not isinstance(name, str) or name not in self.tools:
            return Result(False, f"error: unknown tool {name!r}; tools: {', '.join(sorted(self.tools))}")
        if not isinstance(args, dict):
            return Result(False, f"error: the arguments of {name} must be an object", name)
        return name, args

    def check_arguments(self, tool: Tool, args: dict) -> str | None:
        """The error message for ``args``, or None if they fit the tool's spec."""
        missing = [a for a in tool.params if a not in args]
        unknown = [a for a in args if a not in tool.params]
        if missing or unknown:
            return f"error: {tool.name} takes ({', '.join(tool.params)}); missing {missing}, unknown {unknown}"
        for arg, kind in tool.params.items():
            if not _check_type(args[arg], kind):
                return f"error: {tool.name} argument {arg}={args[arg]!r:.40} is not of type {kind}"
        return None

    def call(self, text: str) -> Result:
        """Parse, check and run one call; never raises."""
        parsed = self.parse(text)
        if isinstance(parsed, Result):
            return parsed
        name, args = parsed
        tool = self.tools[name]
        error = self.check_arguments(tool, args)
        if error:
            return Result(False, error, name, args)
        return self._run(tool, args)

    def _run(self, tool: Tool, args: dict) -> Result:
        box: dict = {}

        def target():
            try:
                box["value"] = tool.fn(**args)
            except Exception as e:  # noqa: BLE001 -- any tool failure goes back to the model
                box["error"] = f"{type(e).__name__}: {e}"

        thread = threading.Thread(target=target, daemon=True, name=f"tool-{tool.name}")
        thread.start()
        thread.join(tool.timeout_s)
        if thread.is_alive():
            return Result(False, f"error: {tool.name} did not finish within {tool.timeout_s:g} s", tool.name, args)
        if "error" in box:
            return Result(False, f"error: {tool.name} failed: {box['error']}"[:MAX_RESULT_CHARS], tool.name, args)
        value = box.get("value")
        content = value if isinstance(value, str) else json.dumps(value, default=str)
        return Result(True, content[:MAX_RESULT_CHARS], tool.name, args)
