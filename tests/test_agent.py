"""The chat driver: tool calls run, their failures reach the model as results, limits end a
reply with a status, and nothing the model writes is executed.

The driver's control flow is exercised with ``Scripted``, a ``Writer`` that writes given
texts (every misbehaviour a model can have, on demand); a real block-diffusion model and
an AR model run the same driver below it.
"""

import dataclasses
import json

import numpy as np
import pytest

from dllm_jax.agent import STATUSES, ARWriter, DiffusionWriter, Writer, Written, chat, prompt_ids
from dllm_jax.config import MeshConfig, ModelConfig, NoiseConfig
from dllm_jax.data.chat import CALL, END, END_CALL, check_messages, render, symbol_id
from dllm_jax.data.tokenizer import Tokenizer
from dllm_jax.data.tool_task import conversations, registry
from dllm_jax.diffusion import make_objective
from dllm_jax.nn.model import create_model
from dllm_jax.sharding import make_mesh
from dllm_jax.tools import UNAVAILABLE, Registry, Tool

QUESTION = [{"role": "user", "content": "What is 48213 plus 99127?"}]


@pytest.fixture(scope="module")
def tok():
    texts = [render(c) for c in conversations("train", 400)]
    return Tokenizer.train(texts, 320, None, seed=0)


class Scripted(Writer):
    """Writes ``texts`` in turn; records what it was given (prompt, then each appended)."""

    def __init__(self, tokenizer, texts, room: int = 100):
        self.tokenizer, self.texts, self.given, self._room = tokenizer, list(texts), [], room
        self.end_call, self.end = symbol_id(tokenizer, END_CALL), symbol_id(tokenizer, END)

    @property
    def max_len(self):
        return 1000

    def start(self, ids):
        self.given.append(ids)
        return self._next()

    def resume(self, appended):
        self.given.append(appended)
        return self._next()

    def room(self, appended):
        return self._room

    def _next(self):
        ids = self.tokenizer.encode(self.texts.pop(0))
        stop = "call" if ids[-1] == self.end_call else "end" if ids[-1] == self.end else None
        return Written(ids, stop, len(ids), 0.0)


def _call(name, **arguments):
    return CALL + json.dumps({"name": name, "arguments": arguments}) + END_CALL


TOOLS = Registry([*registry().tools.values(),
                  Tool("boom", lambda x: 1 / 0, {"x": "integer"}),
                  Tool("hang", lambda: __import__("time").sleep(5), {}, timeout_s=0.2)])


def test_a_call_is_run_and_its_result_appended(tok):
    writer = Scripted(tok, [_call("add", a=48213, b=99127), "147340" + END])
    reply = chat(writer, QUESTION, TOOLS)
    assert reply.status == "done" and reply.answer == "147340"
    assert [c.content for c in reply.calls] == ["147340"]
    assert tok.decode(writer.given[1]) == "<|result|>147340<|/result|>"
    assert writer.given[0] == prompt_ids(QUESTION, tok)  # the prompt as trained, unchanged
    history = check_messages(QUESTION + reply.messages)  # a valid conversation to go on with
    assert render(history).endswith("<|result|>147340<|/result|>147340<|end|>")


@pytest.mark.parametrize("call_text, error", [
    (_call("divide", a=1, b=2), "unknown tool 'divide'"),
    (CALL + '{"name": "add", "arguments": {"a": 1,' + END_CALL, "not valid JSON"),
    (_call("add", a="1", b=2), "a='1' is not of type integer"),
    (_call("boom", x=3), "boom failed: ZeroDivisionError"),
    (_call("hang"), "did not finish within 0.2 s"),
    (CALL + "__import__('os').system('touch PWNED')" + END_CALL, "not valid JSON"),
])
def test_every_failed_call_is_a_result_the_model_reads(tok, call_text, error, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    writer = Scripted(tok, [call_text, "sorry" + END])
    reply = chat(writer, QUESTION, TOOLS)
    assert reply.status == "done" and reply.answer == "sorry"
    assert not reply.calls[0].ok and error in reply.calls[0].content
    assert error in tok.decode(writer.given[1])  # what the model reads next
    assert not (tmp_path / "PWNED").exists()


def test_tools_off_answers_every_call_with_unavailable(tok):
    reply = chat(Scripted(tok, [_call("add", a=1, b=2), "3" + END]), QUESTION, None)
    assert reply.calls[0].content == UNAVAILABLE and reply.answer == "3"


def test_a_call_never_closed_ends_with_the_length_status(tok):
    reply = chat(Scripted(tok, [CALL + '{"name": "add", "arguments": {"a": 11111111']), QUESTION, TOOLS)
    assert reply.status == "length" and reply.answer.startswith(CALL) and not reply.calls


def test_no_room_for_the_result_ends_with_the_length_status(tok):
    reply = chat(Scripted(tok, [_call("add", a=1, b=2)], room=0), QUESTION, TOOLS)
    assert reply.status == "length" and reply.calls[0].ok


def test_more_calls_than_allowed(tok):
    texts = [_call("add", a=1, b=2)] * 4
    writer = Scripted(tok, texts)
    reply = chat(writer, QUESTION, TOOLS, max_calls=2)
    assert reply.status == "call_limit"
    assert [c.ok for c in reply.calls] == [True, True, False]
    assert "no more tool calls allowed (limit 2)" in reply.calls[2].content
    assert "no more tool calls" in tok.decode(writer.given[3])  # the model was told once
    with pytest.raises(ValueError, match="max_calls must be an integer >= 0, got -1"):
        chat(Scripted(tok, []), QUESTION, TOOLS, max_calls=-1)


def _models(tok, attention):
    mesh = make_mesh(MeshConfig())
    cfg = ModelConfig(num_tokens=tok.num_tokens, max_len=48, d_model=32, num_layers=2, num_heads=2, mlp_dim=64,
                      attention=attention, block_size=4 if attention == "block_causal" else 1)
    graphdef, params = create_model(cfg, mesh)
    return graphdef, params, cfg


@pytest.mark.parametrize("attention", ["block_causal", "causal"])
def test_real_models_run_the_driver(tok, attention):
    graphdef, params, cfg = _models(tok, attention)
    if attention == "causal":
        writer = ARWriter(graphdef, params, tok)
    else:
        writer = DiffusionWriter(graphdef, params, tok, make_objective(NoiseConfig(), cfg.num_tokens, cfg))
    reply = chat(writer, QUESTION, TOOLS)  # an untrained model: whatever it writes, no crash
    assert reply.status in STATUSES and reply.nfe >= 1
    prompt = prompt_ids(QUESTION, tok)
    if attention != "causal":  # generation never changes the prompt
        assert writer.generation.tokens[0, : len(prompt)].tolist() == prompt
    assert sum(len(s.ids) for s in reply.segments) <= writer.max_len
    with pytest.raises(ValueError, match="no room to answer within the model's 48 positions"):
        chat(writer, [{"role": "user", "content": "1 2 3 4 5 6 7 8 9 " * 8}], TOOLS)


def test_diffusion_resume_equals_fresh_generation_with_fewer_passes(tok):
    graphdef, params, cfg = _models(tok, "block_causal")
    writer = DiffusionWriter(graphdef, params, tok, make_objective(NoiseConfig(), cfg.num_tokens, cfg))
    prompt = prompt_ids(QUESTION, tok)
    first = writer.start(prompt)
    cut = len(first.ids) // 2 + 1  # resume after a prefix of what it wrote
    writer.generation = dataclasses.replace(writer.generation, ends=np.array([len(prompt) + cut]))
    appended = tok.encode("<|result|>7<|/result|>")
    resumed = writer.resume(appended)
    fresh = writer.start(prompt + first.ids[:cut] + appended)
    assert resumed.ids == fresh.ids
    assert resumed.nfe < fresh.nfe
