"""Measure chat models on the synthetic tool-use task's test split.

    python -m experiments.tool_eval runs/tool-use-block4 runs/tool-use-ar --out benchmarks/tool_use

For each run: every test question is answered with the task's tools and again with the
tools switched off (each call then reads ``tools.UNAVAILABLE``). Reported: well-formed
calls (parsed, valid arguments, executed) and the right call (the reference's name and
arguments) on questions that need a tool; answer accuracy with and without tools; no call
on questions that need none; NFE and wall seconds per answer. For a diffusion model, each
reply with a call is also regenerated from scratch with the result in the prompt: the
tokens must equal the resumed ones and the NFE is compared. Writes ``results.json``,
``results.md`` and one transcript.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import numpy as np

from dllm_jax.agent import GREEDY, ARWriter, DiffusionWriter, chat, prompt_ids
from dllm_jax.data.chat import END, ChatSource, result_text, symbol_id
from dllm_jax.data.tool_task import reference, registry
from dllm_jax.files import write_atomic
from dllm_jax.sampling.rules import make_rule
from dllm_jax.training.loop import run_sequences
from dllm_jax.training.run_dir import load_run


def step_rule(spec: str, objective):
    """A greedy step rule from ``name`` or ``threshold:<value>`` (``--rule``)."""
    name, _, value = spec.partition(":")
    options = {"threshold": float(value)} if value else {}
    return make_rule(name, objective, logits=GREEDY, **options)


@functools.cache
def loaded(run_dir):
    """``load_run(run_dir)``, read once per process (every setting and the transcript reuse it)."""
    return load_run(run_dir)


def writer_for(run_dir, seed: int = 0, num_steps: int | None = None, rule: str | None = None):
    """(writer, experiment) of a run directory: ``ARWriter`` for a causal model; a diffusion
    model's ``DiffusionWriter`` takes ``num_steps`` per block (default the block size) of
    the greedy ``rule`` (default ``agent.default_rule``)."""
    exp, graphdef, params, tok, objective, _ = loaded(run_dir)
    if exp.model.attention == "causal":
        return ARWriter(graphdef, params, tok, seed=seed), exp
    return DiffusionWriter(graphdef, params, tok, objective, rule=rule and step_rule(rule, objective), seed=seed,
                           num_steps=num_steps), exp


def _resume_check(writer, question, reply):
    """(same tokens, resumed NFE, regenerated NFE) of a reply's first resume, or None."""
    if len(reply.segments) < 2 or not isinstance(writer, DiffusionWriter):
        return None
    tok = writer.tokenizer
    prefix = prompt_ids(question, tok) + reply.segments[0].ids + tok.encode(result_text(reply.calls[0].content))
    fresh = writer.start(prefix)
    return fresh.ids == reply.segments[1].ids, reply.segments[1].nfe, fresh.nfe


def evaluate_run(run_dir, data_dir, limit: int | None = None, seed: int = 0, num_steps: int | None = None,
                 rule: str = "left_to_right") -> dict:
    """The task's metrics for one run (see the module docstring); ``limit`` test questions."""
    writer, exp = writer_for(run_dir, seed, num_steps, rule)
    tools = registry(exp.data.seed)
    source = ChatSource(data_dir, "test")
    rows = []
    count = len(source) if limit is None else min(limit, len(source))
    writer.start(prompt_ids(source.messages(0)[:1], writer.tokenizer))  # compile outside the clock
    for i in range(count):
        messages = source.messages(i)
        if any(m["role"] == "tool" and m["content"].startswith("error") for m in messages):
            continue  # a reference answered with tools off: asked again below anyway
        answer, call = reference(messages)
        question = messages[:1]
        with_tools = chat(writer, question, tools)
        check = _resume_check(writer, question, with_tools)
        without = chat(writer, question, None) if call is not None else None
        rows.append(dict(
            needs_tool=call is not None, called=bool(with_tools.calls),
            well_formed=bool(with_tools.calls) and with_tools.calls[0].ok,
            right_call=bool(with_tools.calls) and call is not None and with_tools.calls[0].name == call["name"]
            and with_tools.calls[0].arguments == call["arguments"],
            correct=with_tools.answer.strip() == answer, status=with_tools.status,
            overlong=with_tools.answer.strip().startswith(answer) and len(with_tools.answer.strip()) > len(answer),
            correct_without=None if without is None else without.answer.strip() == answer,
            nfe=with_tools.nfe, seconds=with_tools.seconds, resume=check))
    out = summarise(rows, exp, run_dir)
    out["end_target_share"] = end_target_share(exp, writer.tokenizer)
    if isinstance(writer, DiffusionWriter):
        out.update(model=f"{exp.name} {rule} K={writer.num_steps}", steps_per_block=writer.num_steps, rule=rule)
    return out


def end_target_share(exp, tokenizer, count: int = 1000) -> float:
    """The share of the learned training positions that are ``<|end|>`` (``data.chat_tail``)."""
    seqs = run_sequences(exp, tokenizer, "train", shuffle=False)
    end, learned = symbol_id(tokenizer, END), 0
    ends = 0
    for _ in range(min(count, len(seqs.source))):
        example = next(seqs)
        learned += int(example.loss_mask_L.sum())
        ends += int((example.loss_mask_L & (example.tokens_L == end)).sum())
    return ends / max(learned, 1)


def summarise(rows, exp, run_dir) -> dict:
    tool = [r for r in rows if r["needs_tool"]]
    direct = [r for r in rows if not r["needs_tool"]]
    resumes = [r["resume"] for r in rows if r["resume"] is not None]

    def share(items, key):
        return float(np.mean([bool(r[key]) for r in items])) if items else float("nan")

    out = dict(
        run=str(run_dir), model=exp.name, attention=exp.model.attention, block_size=exp.model.block_size,
        questions=len(rows), tool_questions=len(tool), direct_questions=len(direct),
        well_formed_calls=share(tool, "well_formed"), right_calls=share(tool, "right_call"),
        accuracy_with_tools=share(tool, "correct"), accuracy_without_tools=share(tool, "correct_without"),
        no_call_when_not_needed=1.0 - share(direct, "called"), accuracy_direct=share(direct, "correct"),
        overlong_answers=share(rows, "overlong"),
        nfe_per_answer=float(np.mean([r["nfe"] for r in rows])),
        seconds_per_answer=float(np.mean([r["seconds"] for r in rows])),
        statuses={s: sum(r["status"] == s for r in rows) for s in sorted({r["status"] for r in rows})},
    )
    if resumes:
        out.update(resume_same_tokens=float(np.mean([same for same, _, _ in resumes])),
                   resume_nfe=float(np.mean([a for _, a, _ in resumes])),
                   regenerate_nfe=float(np.mean([b for _, _, b in resumes])), resume_checked=len(resumes))
    return out


def transcript(run_dir, data_dir, index: int = 0) -> str:
    """One chat of the test split with a tool call, as text."""
    writer, exp = writer_for(run_dir)
    source = ChatSource(data_dir, "test")
    i = next(j for j in range(index, len(source)) if reference(source.messages(j))[1] is not None)
    question = source.messages(i)[:1]
    lines = [f"# {exp.name}: test question {i}", "", f"user: {question[0]['content']}"]

    def show(written, result):
        lines.append(f"  [segment: {len(written.ids)} tokens, {written.nfe} NFE, stop={written.stop}]")
        if result is not None:
            lines.append(f"  tool result ({'ok' if result.ok else 'error'}): {result.content}")

    reply = chat(writer, question, registry(exp.data.seed), on_segment=show)
    for m in reply.messages:
        if m["role"] == "assistant":
            call = f" <call>{m['call_text']}</call>" if "call_text" in m else ""
            lines.append(f"assistant: {m['content']}{call}")
        else:
            lines.append(f"tool: {m['content']}")
    lines.append(f"status {reply.status}; reference answer {reference(source.messages(i))[0]}")
    return "\n".join(lines) + "\n"


def load_run_is_diffusion(run_dir) -> bool:
    return loaded(run_dir)[0].model.attention != "causal"


def table(results: list[dict]) -> str:
    keys = ["well_formed_calls", "right_calls", "accuracy_with_tools", "accuracy_without_tools",
            "no_call_when_not_needed", "accuracy_direct", "overlong_answers", "end_target_share",
            "nfe_per_answer", "seconds_per_answer", "resume_same_tokens", "resume_nfe", "regenerate_nfe"]
    head = "| metric | " + " | ".join(r["model"] for r in results) + " |"
    lines = [head, "|" + "---|" * (len(results) + 1)]
    for k in keys:
        cells = [r.get(k) for r in results]
        lines.append(f"| {k} | " + " | ".join("—" if c is None else f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--data", default="runs/tool_task")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--num_steps", type=int, nargs="*", default=[None],
                        help="diffusion steps per block to evaluate (default: the block size)")
    parser.add_argument("--rules", nargs="*", default=["left_to_right"],
                        help="greedy diffusion step rules to evaluate: a name or threshold:<value>")
    args = parser.parse_args(argv)
    results = []
    for run in args.runs:
        settings = [(k, r) for r in args.rules for k in args.num_steps] if load_run_is_diffusion(run) else [(None, "")]
        for k, rule in settings:
            t0 = time.perf_counter()
            results.append(evaluate_run(run, args.data, args.limit, num_steps=k, rule=rule or "left_to_right"))
            print(json.dumps(results[-1], indent=1), f"\n({time.perf_counter() - t0:.0f} s)", flush=True)
    print(table(results))
    if args.out:
        out = Path(args.out)
        write_atomic(out / "results.json", (json.dumps(results, indent=1) + "\n").encode())
        write_atomic(out / "results.md", table(results).encode())
        write_atomic(out / "transcript.txt", "".join(transcript(r, args.data) for r in args.runs).encode())


if __name__ == "__main__":
    main()
