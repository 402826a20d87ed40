"""Chat with tools: generate, stop where a call closes, run the tool, append its result,
resume, and repeat until the model writes ``<|end|>``.

``chat(model, messages, tools)`` answers the last user message of ``messages``. The
model writes through a ``Writer``: ``DiffusionWriter`` (``generate`` with the stop
sequence ``<|/call|>`` and eos ``<|end|>``, then ``resume`` after each result, which keeps
the exact cache of a block-causal model's finished blocks) or ``ARWriter`` (a causal model,
``ar_generate``; the prefix is fed again after each result).

Every failure of a call — text that is not JSON, an unknown tool, bad arguments, the tool
raising or timing out, tools switched off (``tools=None``), one call more than
``max_calls`` — becomes a result the model reads (``dllm_jax.tools``); a second call past
the limit ends the reply with status ``"call_limit"``. A reply that runs out of room
(e.g. a call never closed) ends with ``"length"``. Nothing the model writes is executed.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
from flax import nnx

from dllm_jax.data.chat import ASSISTANT, CALL, END, END_CALL, encode, result_text, symbol_id
from dllm_jax.diffusion.block import noise_process
from dllm_jax.diffusion.masked import MaskedProcess
from dllm_jax.sampling.draws import Logits
from dllm_jax.sampling.driver import StepRule
from dllm_jax.sampling.generate import generate, resume
from dllm_jax.sampling.kv_decode import ar_generate
from dllm_jax.sampling.rules import make_rule
from dllm_jax.tools import UNAVAILABLE, Registry, Result

STATUSES = ("done", "length", "call_limit")
GREEDY = Logits(top_k=1)


class Written(NamedTuple):
    """What one generate/resume call wrote: its new ids (with the stop token), why it
    stopped (``"call"``, ``"end"``, or None: out of room), its NFE and seconds."""

    ids: list[int]
    stop: str | None
    nfe: int
    seconds: float


class Writer(abc.ABC):
    """Writes a reply in segments: ``start`` after a prompt, ``resume`` after appended ids."""

    def __init__(self, graphdef, params, tokenizer, seed: int = 0):
        self.graphdef, self.params, self.tokenizer, self.seed = graphdef, params, tokenizer, seed
        self.config = nnx.merge(graphdef, params).config
        self.end_call, self.end = symbol_id(tokenizer, END_CALL), symbol_id(tokenizer, END)

    @property
    def max_len(self) -> int:
        return self.config.max_len

    @abc.abstractmethod
    def start(self, ids: list[int]) -> Written:
        """Write after the prompt ``ids``."""

    @abc.abstractmethod
    def resume(self, appended: list[int]) -> Written:
        """Write after the text so far followed by ``appended``."""

    @abc.abstractmethod
    def room(self, appended: list[int]) -> int:
        """Positions left to write after the text so far followed by ``appended``."""

    def _written(self, generation, seconds: float) -> Written:
        start, end = int(generation.prompt_lengths[0]), int(generation.ends[0])
        stop = {0: "call", 1: "end"}.get(int(generation.stopped[0]))
        return Written(generation.tokens[0, start:end].tolist(), stop, int(generation.nfe[0]), seconds)


def default_rule(objective) -> StepRule:
    """Masked noise: greedy draws, left to right inside a block (one token per step at K =
    block size), the most accurate order on the tool-use task (``benchmarks/tool_use``).
    Uniform or hybrid noise: the exact ancestral step."""
    if isinstance(noise_process(objective), MaskedProcess):
        return make_rule("left_to_right", objective, logits=GREEDY)
    return make_rule("ancestral", objective)


class DiffusionWriter(Writer):
    """A diffusion model through ``generate`` / ``resume``. ``rule``: default greedy draws,
    left to right inside a block (``default_rule``); ``num_steps`` per block
    (default the block size: one token per step); a block-causal model writes block by
    block with the exact cache."""

    def __init__(self, graphdef, params, tokenizer, objective, *, rule: StepRule | None = None,
                 num_steps: int | None = None, block_size: int | None = None, seed: int = 0):
        super().__init__(graphdef, params, tokenizer, seed)
        block_causal = self.config.attention == "block_causal"
        self.block_size = self.config.block_size if block_causal else block_size
        self.cache = "exact" if block_causal else "none"
        self.rule = rule if rule is not None else default_rule(objective)
        self.num_steps = num_steps or self.block_size or 8
        self.generation = None

    @property
    def max_len(self) -> int:
        block = self.block_size or 1
        return self.config.max_len // block * block  # the canvas is whole blocks

    def start(self, ids: list[int]) -> Written:
        t0 = time.perf_counter()
        self.generation = generate(
            self.graphdef, self.params, [ids], length=self.max_len - len(ids), rule=self.rule,
            num_steps=self.num_steps, seed=self.seed, block_size=self.block_size, cache=self.cache,
            stop=[[self.end_call]], eos_id=self.end)
        return self._written(self.generation, time.perf_counter() - t0)

    def resume(self, appended: list[int]) -> Written:
        t0 = time.perf_counter()
        self.generation = resume(self.graphdef, self.params, self.generation, [appended], length=self.room(appended))
        return self._written(self.generation, time.perf_counter() - t0)

    def room(self, appended: list[int]) -> int:
        return self.max_len - int(self.generation.ends[0]) - len(appended)


class ARWriter(Writer):
    """A causal model through ``ar_generate`` (greedy by default); after a result the whole
    text so far is the new prompt."""

    def __init__(self, graphdef, params, tokenizer, *, logits: Logits = GREEDY, seed: int = 0):
        super().__init__(graphdef, params, tokenizer, seed)
        self.logits, self.ids = logits, []

    def start(self, ids: list[int]) -> Written:
        t0 = time.perf_counter()
        generation = ar_generate(self.graphdef, self.params, [ids], length=self.max_len - len(ids),
                                 logits=self.logits, seed=self.seed, eos_id=self.end, stop=[[self.end_call]])
        self.ids = generation.tokens[0, : int(generation.ends[0])].tolist()
        return self._written(generation, time.perf_counter() - t0)

    def resume(self, appended: list[int]) -> Written:
        return self.start(self.ids + list(appended))

    def room(self, appended: list[int]) -> int:
        return self.max_len - len(self.ids) - len(appended)


class Reply(NamedTuple):
    """The outcome of ``chat``: the messages to append (assistant turns and tool results),
    the final answer, each call's result, the status, and every segment written."""

    messages: list[dict]
    answer: str
    calls: list[Result]
    status: str
    segments: list[Written]

    @property
    def nfe(self) -> int:
        return sum(s.nfe for s in self.segments)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.segments)


def prompt_ids(messages, tokenizer) -> list[int]:
    """The ids a model continues: the conversation, then ``<|assistant|>`` after a user turn."""
    ids, _ = encode(messages, tokenizer)
    if messages[-1]["role"] == "user":
        ids.append(symbol_id(tokenizer, ASSISTANT))
    return ids


def split_call(ids: list[int], tokenizer) -> tuple[str, str]:
    """(the text before the call, the call's text between its tags) of a segment that ends
    with ``<|/call|>``; a call with no ``<|call|>`` opening it is all call text."""
    call_id = symbol_id(tokenizer, CALL)
    body = ids[:-1]  # without <|/call|>
    opened = max((i for i, x in enumerate(body) if x == call_id), default=-1)
    return tokenizer.decode(body[: max(opened, 0)]), tokenizer.decode(body[opened + 1:])


def run_call(tools: Registry | None, text: str, made: int, max_calls: int) -> Result:
    """The result of the ``made + 1``-th call with text ``text``."""
    if made >= max_calls:
        return Result(False, f"error: no more tool calls allowed (limit {max_calls}); answer now")
    return tools.call(text) if tools is not None else Result(False, UNAVAILABLE)


def chat(writer: Writer, messages, tools: Registry | None, *, max_calls: int = 4,
         on_segment: Callable[[Written, Result | None], None] | None = None) -> Reply:
    """Answer the last turn of ``messages`` (see the module docstring). ``on_segment`` is
    called after every segment with the call's result (None when the segment has no call)."""
    if not isinstance(max_calls, int) or max_calls < 0:
        raise ValueError(f"max_calls must be an integer >= 0, got {max_calls!r}")
    tok = writer.tokenizer
    ids = prompt_ids(messages, tok)
    if len(ids) >= writer.max_len:
        raise ValueError(f"the conversation is {len(ids)} tokens: no room to answer within the model's "
                         f"{writer.max_len} positions")
    written = writer.start(ids)
    out, calls, segments = [], [], []
    while True:
        segments.append(written)
        if written.stop != "call":
            status = "done" if written.stop == "end" else "length"
            ids = written.ids[:-1] if written.stop == "end" else written.ids
            out.append({"role": "assistant", "content": tok.decode(ids)})
            _notify(on_segment, written, None)
            return Reply(out, out[-1]["content"], calls, status, segments)
        before, text = split_call(written.ids, tok)
        if len(calls) > max_calls:  # the model already read that it may call no more
            out.append({"role": "assistant", "content": before, "call_text": text})
            _notify(on_segment, written, None)
            return Reply(out, "", calls, "call_limit", segments)
        result = run_call(tools, text, len(calls), max_calls)
        calls.append(result)
        out += [{"role": "assistant", "content": before, "call_text": text},
                {"role": "tool", "content": result.content}]
        _notify(on_segment, written, result)
        appended = tok.encode(result_text(result.content))
        if writer.room(appended) < 1:
            return Reply(out, "", calls, "length", segments)
        written = writer.resume(appended)


def _notify(on_segment, written, result):
    if on_segment is not None:
        on_segment(written, result)


@dataclasses.dataclass(frozen=True)
class WatchedRule(StepRule):
    """``rule`` with ``callback(block_tokens)`` called on the host after every step (the
    terminal chat's live canvas). The same draws as ``rule``."""

    rule: StepRule
    callback: Callable

    @property
    def process(self):
        return self.rule.process

    def init_state(self, tokens_BL):
        return self.rule.init_state(tokens_BL)

    def check_denoiser(self, denoise) -> None:
        self.rule.check_denoiser(denoise)

    def finished(self, tokens_BL):
        return self.rule.finished(tokens_BL)

    def prior(self, keys_BL):
        return self.rule.prior(keys_BL)

    def step(self, denoise, tokens_BL, t, s, keys_BL, state):
        new_BL, nfe_B, state = self.rule.step(denoise, tokens_BL, t, s, keys_BL, state)
        jax.debug.callback(self.callback, new_BL)
        return new_BL, nfe_B, state
