"""The chat format and SFT sequences: what is learned, what is given, and that a prompt is
never corrupted by any objective's training loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax.config import ModelConfig, NoiseConfig
from dllm_jax.data.chat import (
    ASSISTANT,
    END,
    ChatSource,
    encode,
    padded_example,
    prompt_text,
    render,
    symbol_id,
    write_conversations,
)
from dllm_jax.data.corpus import make_source
from dllm_jax.data.pipeline import ChatSequences
from dllm_jax.diffusion import make_objective

CALL = {"name": "add", "arguments": {"a": 48213, "b": 99127}}
CONVERSATION = [
    {"role": "user", "content": "What is 48213 plus 99127?"},
    {"role": "assistant", "content": "", "tool_call": CALL},
    {"role": "tool", "content": "147340"},
    {"role": "assistant", "content": "The answer is 147340."},
]
NO_TOOL = [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "5."}]


def test_only_what_the_assistant_writes_is_learned(tokenizer):
    ids, learned = encode(CONVERSATION, tokenizer)
    assert tokenizer.decode(ids) == render(CONVERSATION)
    learned_text = tokenizer.decode([i for i, m in zip(ids, learned, strict=True) if m])
    assert learned_text == '<|call|>{"name": "add", "arguments": {"a": 48213, "b": 99127}}<|/call|>' \
                           "The answer is 147340.<|end|>"
    given_text = tokenizer.decode([i for i, m in zip(ids, learned, strict=True) if not m])
    assert given_text == "<|user|>What is 48213 plus 99127?<|assistant|><|result|>147340<|/result|>"
    # the generation prompt encodes to exactly the ids the model was trained on
    prompt = tokenizer.encode(prompt_text(CONVERSATION[:1]))
    assert prompt == ids[: len(prompt)] and not any(learned[: len(prompt)])
    assert prompt_text(CONVERSATION[:1]).endswith(ASSISTANT)
    after_result = tokenizer.encode(prompt_text(CONVERSATION[:3]))
    assert after_result == ids[: len(after_result)]


@pytest.mark.parametrize("tail_block, learned_tail", [(None, 40), (8, None), (1, 0)])
def test_the_end_tail_is_learned_as_configured(tokenizer, tail_block, learned_tail):
    ids, learned = encode(NO_TOOL, tokenizer)
    n, L = len(ids), 40 + len(ids)
    tokens_L, mask_L = padded_example(NO_TOOL, tokenizer, L, tail_block)
    end = symbol_id(tokenizer, END)
    assert tokens_L[:n].tolist() == ids and (tokens_L[n:] == end).all()
    assert mask_L[:n].tolist() == learned
    expected = learned_tail if learned_tail is not None else -(-n // 8) * 8 - n
    assert mask_L[n:].sum() == expected and mask_L[n : n + expected].all()


def test_a_cut_conversation_learns_no_tail(tokenizer):
    tokens_L, mask_L = padded_example(CONVERSATION, tokenizer, 12, None)
    ids, learned = encode(CONVERSATION, tokenizer)
    assert tokens_L.tolist() == ids[:12] and mask_L.tolist() == learned[:12]


def test_chat_source_round_trip_and_resumable_sequences(tokenizer, tmp_path):
    write_conversations(tmp_path / "train.jsonl", [CONVERSATION, NO_TOOL] * 3)
    source = make_source(f"chat:{tmp_path}", "train")
    assert isinstance(source, ChatSource) and len(source) == 6 and source[1] == render(NO_TOOL)
    seqs = ChatSequences(source, tokenizer, 96, tail_block=4, seed=3)
    first = [next(seqs) for _ in range(4)]
    state = seqs.get_state()
    rest = [next(seqs) for _ in range(5)]
    again = ChatSequences(source, tokenizer, 96, tail_block=4, seed=3)
    again.set_state(state)
    for a, b in zip(rest, [next(again) for _ in range(5)], strict=True):
        assert (a.tokens_L == b.tokens_L).all() and (a.loss_mask_L == b.loss_mask_L).all()
    assert {tokenizer.decode(e.tokens_L[e.tokens_L != symbol_id(tokenizer, END)]) for e in first} <= {
        render(CONVERSATION)[: -len(END)], render(NO_TOOL)[: -len(END)]}


def test_bad_conversations_are_named(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{oops\n')
    with pytest.raises(ValueError, match=r"train.jsonl:2: not valid JSON"):
        ChatSource(tmp_path)
    (tmp_path / "train.jsonl").write_text('{"messages": [{"role": "tool", "content": "1"}]}\n')
    with pytest.raises(ValueError, match="train.jsonl:1: message 0 is a tool result that follows no tool call"):
        ChatSource(tmp_path)
    (tmp_path / "train.jsonl").write_text('{"messages": [{"role": "robot", "content": "1"}]}\n')
    with pytest.raises(ValueError, match="message 0 must be a dict with role in"):
        ChatSource(tmp_path)
    with pytest.raises(FileNotFoundError, match="validation.jsonl"):
        ChatSource(tmp_path, "validation")
    with pytest.raises(ValueError, match="bad tool_call"):
        render([{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_call": {"name": 3}}])


@pytest.mark.parametrize("process, attention", [("masked", "bidirectional"), ("uniform", "bidirectional"),
                                                ("masked", "block_causal")])
def test_training_never_corrupts_the_prompt(tokenizer, process, attention):
    """Inspect the corrupted batch the network sees: given positions are bitwise clean,
    learned ones are corrupted (at t near 1 nearly all of them; a block model draws one
    time per block, stratified over the row, so about half of them)."""
    L = 64
    rows = [padded_example(c, tokenizer, L, None) for c in (CONVERSATION, NO_TOOL, CONVERSATION, NO_TOOL)]
    tokens_BL = jnp.asarray(np.stack([r[0] for r in rows]))
    mask_BL = jnp.asarray(np.stack([r[1] for r in rows]))
    model = ModelConfig(num_tokens=tokenizer.num_tokens, max_len=L, attention=attention, block_size=8)
    objective = make_objective(NoiseConfig(process=process), tokenizer.num_tokens, model)
    seen = []

    def apply_fn(x_BL, t_B, clean_BL=None):
        seen.append(np.asarray(x_BL))
        return jnp.zeros((*x_BL.shape, model.num_tokens), jnp.float32)

    keys_B = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(4))
    objective.training_loss(apply_fn, keys_B, tokens_BL, mask_BL, jnp.full((4,), 0.99))
    noisy_BL = seen[0][:, :L]
    given = ~np.asarray(mask_BL)
    assert (noisy_BL[given] == np.asarray(tokens_BL)[given]).all()
    changed = (noisy_BL != np.asarray(tokens_BL))[~given]
    assert changed.mean() > (0.3 if attention == "block_causal" else 0.8)
