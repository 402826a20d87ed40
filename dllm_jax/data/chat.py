"""Conversations in the chat format, and the sequences of supervised fine-tuning.

A conversation is a list of messages (OpenAI-style dicts):

* ``{"role": "user", "content": str}``
* ``{"role": "assistant", "content": str, "tool_call": {"name": str, "arguments": {...}}}``
  (``tool_call`` optional: a turn that calls a tool ends with the call; ``"call_text": str``
  instead gives the call's text verbatim, as a model wrote it, well-formed or not)
* ``{"role": "tool", "content": str}``: the result of the previous call.

Rendered text (the special tokens are user-defined pieces of every tokenizer trained
here, so they are never split)::

    <|user|>What is 48213 plus 99127?<|assistant|><|call|>{"name": "add", ...}<|/call|>
    <|result|>147340<|/result|>The answer is 147340.<|end|>

Only what the assistant writes is learned (LLaDA's SFT): its text, its calls with their
closing tag, and ``<|end|>``. The user's text, the ``<|assistant|>`` tag that opens its
turn and the tool's results are given: they carry no loss and are never corrupted.

Variable length. After ``<|end|>`` the row is filled with ``<|end|>``. With
``tail_block=None`` every filled position is learned (LLaDA: the model learns the length,
at the price of many eos targets); with ``tail_block=n`` only those up to the end of the
n-aligned block holding the first ``<|end|>`` are learned, and the rest stay clean and
unlearned: right for a block-causal model with blocks of ``n`` (no earlier block sees
them) and for AR (``n = 1``: the one ``<|end|>`` target of causal SFT).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dllm_jax.files import write_atomic

USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
CALL, END_CALL = "<|call|>", "<|/call|>"
RESULT, END_RESULT = "<|result|>", "<|/result|>"
CHAT_SYMBOLS = (USER, ASSISTANT, CALL, END_CALL, RESULT, END_RESULT, END)
ROLES = ("user", "assistant", "tool")
SPLITS = ("train", "validation", "test")


def call_text(call: dict) -> str:
    """The text of a tool call: ``<|call|>`` + compact JSON + ``<|/call|>``."""
    return CALL + json.dumps({"name": call["name"], "arguments": call["arguments"]}) + END_CALL


def result_text(content: str) -> str:
    """The text appended after a call: the tool's result between its tags."""
    return RESULT + content + END_RESULT


def check_messages(messages, where: str = "conversation") -> list[dict]:
    """``messages`` as a list of message dicts; ``ValueError`` naming what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: messages must be a non-empty list, got {messages!r:.80}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content", ""), str):
            raise ValueError(f"{where}: message {i} must be a dict with role in {ROLES} and str content, "
                             f"got {m!r:.120}")
        if m["role"] == "tool" and (i == 0 or not _calls(messages[i - 1])):
            raise ValueError(f"{where}: message {i} is a tool result that follows no tool call")
        call = m.get("tool_call")
        if call is not None and (m["role"] != "assistant" or not isinstance(call, dict)
                                 or not isinstance(call.get("name"), str)
                                 or not isinstance(call.get("arguments"), dict)):
            raise ValueError(f"{where}: message {i} has a bad tool_call {call!r:.120} (expected an assistant "
                             "message with {'name': str, 'arguments': dict})")
        if "call_text" in m and (m["role"] != "assistant" or not isinstance(m["call_text"], str)):
            raise ValueError(f"{where}: message {i}: call_text must be a str of an assistant message")
    return messages


def _calls(message: dict) -> bool:
    return bool(message.get("tool_call")) or "call_text" in message


def _call_segment(message: dict) -> str:
    """A message's call as written: ``call_text`` verbatim (what a model wrote, well-formed
    or not) or the JSON of ``tool_call``; '' without a call."""
    if "call_text" in message:
        return CALL + message["call_text"] + END_CALL
    return call_text(message["tool_call"]) if message.get("tool_call") else ""


def segments(messages) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, learned) pieces, in order."""
    out: list[tuple[str, bool]] = []
    for i, m in enumerate(check_messages(messages)):
        if m["role"] == "user":
            out.append((USER + m["content"], False))
        elif m["role"] == "tool":
            out.append((result_text(m["content"]), False))
        else:
            if i == 0 or messages[i - 1]["role"] == "user":
                out.append((ASSISTANT, False))
            text = m["content"] + _call_segment(m)
            out.append((text + ("" if _calls(m) else END), True))  # a turn without a call ends
    return out


def render(messages) -> str:
    """The conversation as one text (tokenizer training, display)."""
    return "".join(text for text, _ in segments(messages))


def prompt_text(messages) -> str:
    """The text a model continues to answer the conversation: ends with ``<|assistant|>``
    after a user message, or with a tool result."""
    text = render(messages)
    return text + ASSISTANT if check_messages(messages)[-1]["role"] == "user" else text


def encode(messages, tokenizer) -> tuple[list[int], list[bool]]:
    """(ids, learned) of a conversation; each piece is encoded on its own, so a prompt
    encodes to the same ids in training and in generation."""
    ids: list[int] = []
    learned: list[bool] = []
    for text, is_learned in segments(messages):
        piece = tokenizer.encode(text)
        ids += piece
        learned += [is_learned] * len(piece)
    return ids, learned


def symbol_id(tokenizer, symbol: str) -> int:
    """The id of a chat symbol; ``ValueError`` if the tokenizer splits it (not a chat tokenizer)."""
    ids = tokenizer.encode(symbol)
    if len(ids) != 1:
        raise ValueError(f"the tokenizer splits {symbol!r} into {len(ids)} pieces: it has no chat symbols "
                         "(train a tokenizer with this version of dllm_jax)")
    return ids[0]


def padded_example(messages, tokenizer, seq_len: int, tail_block: int | None, end_id: int | None = None):
    """(tokens_L, loss_mask_L): the conversation cut to ``seq_len`` and filled with
    ``<|end|>`` (``end_id``, looked up when not given); learned positions as the module
    docstring says."""
    ids, learned = encode(messages, tokenizer)
    end = symbol_id(tokenizer, END) if end_id is None else end_id
    n = min(len(ids), seq_len)
    tokens_L = np.full(seq_len, end, np.int32)
    tokens_L[:n] = ids[:n]
    mask_L = np.zeros(seq_len, bool)
    mask_L[:n] = learned[:n]
    stop = seq_len if tail_block is None else min(seq_len, -(-n // tail_block) * tail_block)
    if stop > n and ids[n - 1] == end:  # the tail of a complete conversation
        mask_L[n:stop] = True
    return tokens_L, mask_L


class ChatSource:
    """Conversations of one split, from ``<dir>/<split>.jsonl`` (one ``{"messages": [...]}``
    per line). As a text source (``len``, ``[i]``) it gives rendered texts, so a tokenizer
    can be trained on it; ``messages(i)`` gives the conversation itself."""

    def __init__(self, path: str | Path, split: str = "train"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.path = Path(path) / f"{split}.jsonl"
        if not self.path.is_file():
            raise FileNotFoundError(f"no conversations file {str(self.path)!r} (expected <dir>/{split}.jsonl)")
        self.conversations = []
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.path}:{n}: not valid JSON ({e.msg})") from None
            where = f"{self.path}:{n}"
            messages = record.get("messages") if isinstance(record, dict) else None
            self.conversations.append(check_messages(messages, where))
        if not self.conversations:
            raise ValueError(f"{self.path} holds no conversations")

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, index: int) -> str:
        return render(self.conversations[index])

    def messages(self, index: int) -> list[dict]:
        return self.conversations[index]


def write_conversations(path: str | Path, conversations: Sequence[list[dict]]) -> Path:
    """Write ``conversations`` as JSONL (``{"messages": ...}`` per line) to ``path``."""
    lines = [json.dumps({"messages": check_messages(c)}) for c in conversations]
    return write_atomic(path, ("\n".join(lines) + "\n").encode())
