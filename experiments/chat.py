"""Chat in the terminal with a trained run: ``python -m experiments.chat RUN_DIR``.

A diffusion model's canvas is shown as it is denoised (``·`` is a masked position; one
line per block), and every tool call is shown with its result as it happens. The tools are
the synthetic tool-use task's (``add``, ``multiply``, ``lookup``); ``--no_tools`` switches
them off (every call then reads an error). ``--message TEXT`` answers one message and exits
(scripts, tests); otherwise type messages, an empty line ends the chat.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from dllm_jax.agent import ARWriter, DiffusionWriter, WatchedRule, chat, default_rule
from dllm_jax.config import special_ids
from dllm_jax.data.tool_task import registry
from dllm_jax.training.run_dir import load_run


class Canvas:
    """Prints a block's tokens after every denoising step, masks as ``·``."""

    def __init__(self, tokenizer, mask_id: int, out=None):
        self.tokenizer, self.mask_id, self.out = tokenizer, mask_id, out or sys.stdout
        self.masked = None

    def __call__(self, block_BC):
        ids = np.asarray(block_BC)[0].tolist()
        masked = sum(x == self.mask_id for x in ids)
        if self.masked is not None and (masked > self.masked or self.masked == 0):
            self.out.write("\n")  # a new block
        self.masked = masked
        pieces = ["·" if x == self.mask_id else self.tokenizer.decode([x]) for x in ids]
        self.out.write("\r    " + "".join(pieces).replace("\n", " "))
        self.out.flush()

    def end(self):
        if self.masked is not None:
            self.out.write("\n")
        self.masked = None


def make_writer(run_dir: str, show_canvas: bool, out=None):
    """(writer, canvas display or None, experiment) of a run directory."""
    exp, graphdef, params, tok, objective, _ = load_run(run_dir)
    if exp.model.attention == "causal":
        return ARWriter(graphdef, params, tok), None, exp
    canvas = Canvas(tok, special_ids(exp.model.num_tokens).mask, out) if show_canvas else None
    rule = default_rule(objective)
    if canvas is not None:
        rule = WatchedRule(rule, canvas)
    return DiffusionWriter(graphdef, params, tok, objective, rule=rule), canvas, exp


def answer(writer, canvas, messages, tools, out=None):
    """One reply, with calls and results printed as they happen; returns the ``Reply``."""
    out = out or sys.stdout
    def on_segment(written, result):
        if canvas is not None:
            canvas.end()
        if result is not None:
            out.write(f"  [tool call -> {'ok' if result.ok else 'error'}] {result.content}\n")
        out.write(f"  ({len(written.ids)} tokens, {written.nfe} network passes, {written.seconds:.2f} s)\n")

    reply = chat(writer, messages, tools, on_segment=on_segment)
    for m in reply.messages:
        if m["role"] == "assistant" and "call_text" in m:
            out.write(f"  call: {m['call_text']}\n")
    out.write(f"assistant: {reply.answer}" + ("" if reply.status == "done" else f"  [{reply.status}]") + "\n")
    return reply


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--no_tools", action="store_true", help="switch the tools off")
    parser.add_argument("--no_canvas", action="store_true", help="do not show the denoising canvas")
    parser.add_argument("--message", default=None, help="answer this one message and exit")
    args = parser.parse_args(argv)
    writer, canvas, exp = make_writer(args.run_dir, not args.no_canvas)
    tools = None if args.no_tools else registry(exp.data.seed)
    if args.message is not None:
        answer(writer, canvas, [{"role": "user", "content": args.message}], tools)
        return
    messages: list[dict] = []
    while True:
        try:
            line = input("you: ").strip()
        except EOFError:
            break
        if not line:
            break
        messages.append({"role": "user", "content": line})
        reply = answer(writer, canvas, messages, tools)
        messages += reply.messages


if __name__ == "__main__":
    main()
