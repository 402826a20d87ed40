"""What ``generate`` (diffusion) and ``ar_generate`` (AR) share: the result type, the checks
of prompts, stop sequences and infill, and finding where a stop sequence ends."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass
class Generation:
    """The result of ``generate``/``resume``, on the host, plus what ``resume`` needs.

    Attributes:
      tokens: (B, canvas) int32, prompt + generated text; padding after each row's end.
      prompt_lengths: (B,) P_b, the prompt length of each row.
      ends: (B,) one past the last returned position (after the stop sequence if one
        stopped the row; the eos itself is returned in ``tokens`` but not in ``completions``).
      stopped: (B,) index of the stop sequence that stopped the row, ``len(stop)`` for eos,
        -1 if the row ran to its full length.
      nfe: (B,) network evaluations spent on each row (a pass over a block or the canvas
        counts one; a guided step counts two).
    """

    tokens: np.ndarray
    prompt_lengths: np.ndarray
    ends: np.ndarray
    stopped: np.ndarray
    nfe: np.ndarray
    eos_id: int | None
    num_stops: int
    _resume: dict = dataclasses.field(repr=False, default_factory=dict)

    def completions(self) -> list[list[int]]:
        """Each row's generated tokens, without the prompt, padding or a final eos."""
        out = []
        for b in range(self.tokens.shape[0]):
            toks = self.tokens[b, self.prompt_lengths[b] : self.ends[b]].tolist()
            if self.eos_id is not None and self.stopped[b] == self.num_stops:
                toks = toks[:-1]
            out.append(toks)
        return out

    def texts(self, tokenizer) -> list[str]:
        return [tokenizer.decode(t) for t in self.completions()]


def as_rows(seqs, name: str) -> list[list[int]]:
    if isinstance(seqs, (str, bytes)) or not isinstance(seqs, Sequence):
        raise TypeError(f"{name} must be a sequence of token-id sequences (one per row), got {type(seqs).__name__}")
    rows = [np.asarray(s).reshape(-1).tolist() if np.ndim(s) else None for s in seqs]
    for b, r in enumerate(rows):
        if r is None or any(not isinstance(x, (int, np.integer)) for x in r):
            raise TypeError(f"{name}[{b}] must be a sequence of integer token ids, got {seqs[b]!r}")
    return rows


def check_ids(rows, high: int, name: str):
    for b, r in enumerate(rows):
        for i, x in enumerate(r):
            if not 0 <= x < high:
                raise ValueError(f"{name}[{b}][{i}] = {x} is not a token id in [0, {high})")


def check_prompts_and_stops(prompts, stop, length, num_tokens: int):
    """(prompt rows, stop tuples) after checking both and ``length``; clear errors naming the value."""
    rows = as_rows(prompts, "prompts")
    if not rows:
        raise ValueError("prompts is empty: give one (possibly empty) prompt per row")
    if isinstance(length, (bool, np.bool_)) or not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(f"length must be an integer >= 1 (positions to generate), got {length!r}")
    check_ids(rows, num_tokens, "prompts")
    stops = tuple(tuple(s) for s in as_rows(stop, "stop"))
    if any(not s for s in stops):
        raise ValueError("stop sequences must be non-empty")
    check_ids([list(s) for s in stops], num_tokens, "stop")
    return rows, stops


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def check_infill(infill, num_rows: int, length: int, num_tokens: int):
    if infill is None:
        return np.full((num_rows, length), -1, np.int64)
    arr = np.asarray(infill)
    if arr.shape != (num_rows, length):
        raise ValueError(
            f"infill must have shape (batch, length) = ({num_rows}, {length}), -1 where unknown; got {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"infill must hold integer ids (-1 where unknown), got dtype {arr.dtype}")
    bad = (arr < -1) | (arr >= num_tokens)
    if bad.any():
        i = np.unravel_index(int(np.argmax(bad)), arr.shape)
        raise ValueError(f"infill{list(i)} = {arr[i]} is neither -1 (unknown) nor a token id in [0, {num_tokens})")
    return arr


def stop_hits(tokens_BS, cols_C, stops, lo_B, hi_B):
    """First position p in ``cols_C`` where a stop sequence ends inside [lo_B, hi_B).

    Returns (found_B, p_B, which_B): which_B is the index of the matching stop (the
    lowest index if several end at the same p).
    """
    S = tokens_BS.shape[1]
    big = jnp.iinfo(jnp.int32).max
    best_p, best_i = jnp.full(lo_B.shape, big), jnp.full(lo_B.shape, -1)
    for i, seq in enumerate(stops):
        m = len(seq)
        idx_MC = cols_C[None, :] - (m - 1) + jnp.arange(m)[:, None]
        win_BMC = tokens_BS[:, jnp.clip(idx_MC, 0, S - 1)]
        match_BC = jnp.all(win_BMC == jnp.asarray(seq, jnp.int32)[None, :, None], axis=1)
        match_BC &= (cols_C[None] - (m - 1) >= lo_B[:, None]) & (cols_C[None] < hi_B[:, None])
        p_B = jnp.min(jnp.where(match_BC, cols_C[None], big), axis=1)
        better = p_B < best_p
        best_p, best_i = jnp.where(better, p_B, best_p), jnp.where(better, i, best_i)
    return best_i >= 0, best_p, best_i
