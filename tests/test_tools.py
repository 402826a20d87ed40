"""The tool runtime: every failure path becomes an error the model reads, never a crash,
and model text is never executed."""

import json
import re
import time

import pytest

from dllm_jax.tools import MAX_CALL_CHARS, Registry, Tool


def _slow(seconds: float):
    time.sleep(seconds)
    return "late"


def _boom(x: int):
    raise RuntimeError(f"cannot handle {x}")


TABLE = {"ada": 417, "bob": 902}
REGISTRY = Registry([
    Tool("add", lambda a, b: a + b, {"a": "integer", "b": "integer"}),
    Tool("lookup", lambda key: TABLE[key], {"key": "string"}),
    Tool("boom", _boom, {"x": "integer"}),
    Tool("slow", _slow, {"seconds": "number"}, timeout_s=0.2),
])


def call(name, **arguments):
    return REGISTRY.call(json.dumps({"name": name, "arguments": arguments}))


def test_a_good_call_runs_the_tool():
    result = call("add", a=48213, b=99127)
    assert result.ok and result.content == "147340" and result.arguments == {"a": 48213, "b": 99127}
    assert call("lookup", key="ada").content == "417"


@pytest.mark.parametrize("text, message", [
    ('{"name": "add", "arguments": {"a": 1, "b": 2}', "not valid JSON"),
    ("__import__('os').system('touch /tmp/pwned')", "not valid JSON"),
    ('["add", 1, 2]', 'a call must be {"name"'),
    ('{"name": "add", "arguments": [1, 2]}', "arguments of add must be an object"),
    ('{"name": "rm", "arguments": {}}', "unknown tool 'rm'; tools: add, boom, lookup, slow"),
    ('{"name": "add", "arguments": {"a": 1}}', r"missing \['b'\]"),
    ('{"name": "add", "arguments": {"a": 1, "b": 2, "c": 3}}', r"unknown \['c'\]"),
    ('{"name": "add", "arguments": {"a": "1", "b": 2}}', "a='1' is not of type integer"),
    ('{"name": "add", "arguments": {"a": true, "b": 2}}', "a=True is not of type integer"),
    ('{"name": "slow", "arguments": {"seconds": NaN}}', "is not of type number"),
    ('{"name": "boom", "arguments": {"x": 7}}', "boom failed: RuntimeError: cannot handle 7"),
    ('{"name": "lookup", "arguments": {"key": "zed"}}', "lookup failed: KeyError"),
    ("1" * (MAX_CALL_CHARS + 1), "more than 4096"),
])
def test_every_failure_is_an_error_result(text, message):
    result = REGISTRY.call(text)
    assert not result.ok and result.content.startswith("error: ")
    assert re.search(message, result.content), result.content


def test_a_hanging_tool_times_out():
    start = time.perf_counter()
    result = call("slow", seconds=5.0)
    assert not result.ok and "did not finish within 0.2 s" in result.content
    assert time.perf_counter() - start < 2.0
    assert call("slow", seconds=0.0).content == "late"


def test_bad_tool_definitions_are_refused():
    with pytest.raises(ValueError, match="argument 'a' has type 'int'"):
        Tool("add", lambda a: a, {"a": "int"})
    with pytest.raises(ValueError, match="identifier"):
        Tool("no spaces", lambda: 0, {})
    with pytest.raises(ValueError, match="two tools are named 'add'"):
        Registry([Tool("add", lambda: 0, {}), Tool("add", lambda: 1, {})])
