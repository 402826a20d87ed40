"""Documents → fixed-length token sequences → global, sharded batches; resumable exactly.

``PackedSequences`` turns a source (any ``Sequence[str]``) into ``(L,)`` int32 sequences;
``GlobalBatches`` groups them into global ``jax.Array`` batches sharded over the mesh's
batch axes. Both expose ``get_state()`` / ``set_state()`` with small JSON-able dicts, saved
with the checkpoint so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

from dllm_jax.config import special_ids
from dllm_jax.data.chat import END, ChatSource, padded_example, symbol_id
from dllm_jax.data.tokenizer import Tokenizer
from dllm_jax.sharding import batch_sharding


class Example(NamedTuple):
    """One sequence: token ids and where the loss applies (False exactly on padding)."""

    tokens_L: np.ndarray
    loss_mask_L: np.ndarray


class PackedSequences:
    """An iterator of ``Example``s of length ``seq_len`` over a source of documents.

    Epoch ``e`` visits the documents in the order ``permutation(seed, e)`` (or in source
    order when ``shuffle=False``); each document is tokenized on the fly.

    * ``pack=True``: the token stream ``encode(doc) + [eos]`` over documents, epoch after
      epoch, is cut into consecutive chunks of ``seq_len`` (a chunk may span documents and
      epochs). No padding; the loss mask is all True. With ``num_epochs`` set, a final
      incomplete chunk is dropped.
    * ``pack=False``: one document per sequence: ``encode(doc)`` truncated to ``seq_len``,
      ``eos`` appended if there is room, padded with the pad id; the loss mask is False
      exactly on padding.

    State ``{"epoch", "position", "offset", ...}``: the next chunk starts at token
    ``offset`` of the ``position``-th document of epoch ``epoch``'s order.
    """

    def __init__(
        self,
        source: Sequence[str],
        tokenizer: Tokenizer,
        seq_len: int,
        seed: int = 0,
        pack: bool = True,
        shuffle: bool = True,
        num_epochs: int | None = None,
    ):
        """Args:
          source: documents, with ``__len__`` and ``__getitem__``.
          tokenizer: gives ids in ``[0, num_tokens)`` and ``eos_id``.
          seq_len: length ``L`` of every sequence.
          seed: seeds the per-epoch document order.
          pack: concatenate and chunk (True) or one padded document per sequence (False).
          shuffle: shuffle documents each epoch.
          num_epochs: stop after this many passes; ``None`` = forever.

        Raises:
          ValueError: empty source, or non-positive ``seq_len`` / ``num_epochs``.
        """
        if not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
        if num_epochs is not None and (not isinstance(num_epochs, int) or num_epochs < 1):
            raise ValueError(f"num_epochs must be None or a positive integer, got {num_epochs!r}")
        if len(source) == 0:
            raise ValueError("PackedSequences got an empty source (no documents)")
        self.source, self.tokenizer, self.seq_len = source, tokenizer, seq_len
        self.seed, self.pack, self.shuffle, self.num_epochs = seed, pack, shuffle, num_epochs
        self.eos_id = tokenizer.eos_id
        self.pad_id = special_ids(tokenizer.num_tokens).pad
        self.epoch, self.position, self.offset = 0, 0, 0
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, permutation)
        self._doc: tuple[int, int, list[int]] | None = None  # (epoch, position, ids)

    def order(self, epoch: int) -> np.ndarray:
        """Document indices of ``epoch`` in visiting order (a function of seed and epoch)."""
        if self._order is None or self._order[0] != epoch:
            n = len(self.source)
            perm = (
                np.random.default_rng([self.seed, epoch]).permutation(n)
                if self.shuffle
                else np.arange(n)
            )
            self._order = (epoch, perm)
        return self._order[1]

    def _document_ids(self, epoch: int, position: int) -> list[int]:
        """``encode(doc) + [eos]`` of the ``position``-th document of ``epoch`` (cached)."""
        if self._doc is None or self._doc[:2] != (epoch, position):
            text = self.source[int(self.order(epoch)[position])]
            self._doc = (epoch, position, self.tokenizer.encode(text) + [self.eos_id])
        return self._doc[2]

    def _finished(self, epoch: int) -> bool:
        return self.num_epochs is not None and epoch >= self.num_epochs

    def _advance(self) -> None:
        self.position, self.offset = self.position + 1, 0
        if self.position == len(self.source):
            self.epoch, self.position = self.epoch + 1, 0

    def __iter__(self):
        return self

    def __next__(self) -> Example:
        if self.pack:
            return self._next_packed()
        return self._next_padded()

    def _next_packed(self) -> Example:
        state = self.get_state()
        tokens: list[int] = []
        while len(tokens) < self.seq_len:
            if self._finished(self.epoch):
                self.set_state(state)  # an incomplete final chunk is dropped, not consumed
                raise StopIteration
            ids = self._document_ids(self.epoch, self.position)
            take = ids[self.offset : self.offset + self.seq_len - len(tokens)]
            tokens += take
            self.offset += len(take)
            if self.offset == len(ids):
                self._advance()
        return Example(np.asarray(tokens, np.int32), np.ones(self.seq_len, bool))

    def _next_padded(self) -> Example:
        if self._finished(self.epoch):
            raise StopIteration
        example = self._padded_example(self.epoch, self.position)
        self._advance()
        return example

    def _padded_example(self, epoch: int, position: int) -> Example:
        """The ``position``-th document of ``epoch`` as one padded sequence."""
        ids = self._document_ids(epoch, position)[: self.seq_len]
        tokens_L = np.full(self.seq_len, self.pad_id, np.int32)
        tokens_L[: len(ids)] = ids
        loss_mask_L = np.zeros(self.seq_len, bool)
        loss_mask_L[: len(ids)] = True
        return Example(tokens_L, loss_mask_L)

    def get_state(self) -> dict:
        """A JSON-able position; the settings are included to catch a mismatched restore."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "offset": self.offset,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "pack": self.pack,
            "shuffle": self.shuffle,
            "num_documents": len(self.source),
        }

    def set_state(self, state: dict) -> None:
        """Resume from ``get_state()``; raises ``ValueError`` if it was taken with other
        settings or another source size."""
        for key in ("seed", "seq_len", "pack", "shuffle", "num_documents"):
            mine = self.get_state()[key]
            if state.get(key) != mine:
                raise ValueError(
                    f"iterator state has {key}={state.get(key)!r} but this iterator has {mine!r}"
                )
        self.epoch, self.position, self.offset = (
            int(state["epoch"]),
            int(state["position"]),
            int(state["offset"]),
        )


class ChatSequences(PackedSequences):
    """One conversation per sequence (``dllm_jax.data.chat``): the loss mask is True
    exactly where the assistant writes (and on the learned part of the ``<|end|>`` tail),
    so a prompt is never corrupted and carries no loss. State as ``PackedSequences``."""

    def __init__(self, source: ChatSource, tokenizer, seq_len: int, tail_block: int | None = None,
                 seed: int = 0, shuffle: bool = True, num_epochs: int | None = None):
        if not isinstance(source, ChatSource):
            raise TypeError(f"ChatSequences needs a ChatSource ('chat:<dir>'), got {type(source).__name__}")
        if tail_block is not None and (not isinstance(tail_block, int) or tail_block < 1):
            raise ValueError(f"tail_block must be None or a positive integer, got {tail_block!r}")
        super().__init__(source, tokenizer, seq_len, seed=seed, pack=False, shuffle=shuffle, num_epochs=num_epochs)
        self.tail_block = tail_block
        self.end_id = symbol_id(tokenizer, END)  # a chat tokenizer, checked up front

    def _padded_example(self, epoch: int, position: int) -> Example:
        messages = self.source.messages(int(self.order(epoch)[position]))
        return Example(*padded_example(messages, self.tokenizer, self.seq_len, self.tail_block, self.end_id))


def make_sequences(source, tokenizer, seq_len: int, *, seed: int = 0, pack: bool = True, shuffle: bool = True,
                   tail_block: int | None = None):
    """The sequences of a source: ``ChatSequences`` for conversations (``ChatSource``, with
    ``tail_block``), else ``PackedSequences`` (with ``pack``)."""
    if isinstance(source, ChatSource):
        return ChatSequences(source, tokenizer, seq_len, tail_block, seed=seed, shuffle=shuffle)
    return PackedSequences(source, tokenizer, seq_len, seed=seed, pack=pack, shuffle=shuffle)


def process_rows(mesh: Mesh, global_batch_size: int) -> np.ndarray:
    """Global batch rows whose data this process must supply, in ascending order.

    The union of the row ranges held by this process's devices under
    ``batch_sharding(mesh)``; ``jax.make_array_from_process_local_data`` expects exactly
    these rows, stacked in this order. For the usual mesh (processes along the batch axes)
    process ``p`` of ``P`` gets rows ``[p*B/P, (p+1)*B/P)``.
    """
    sharding = batch_sharding(mesh, 1)
    rows: set[int] = set()
    for index in sharding.addressable_devices_indices_map((global_batch_size,)).values():
        rows.update(range(global_batch_size)[index[0]])
    return np.asarray(sorted(rows), np.int64)


class GlobalBatches:
    """Global batches ``{"tokens": (B, L) int32, "loss_mask": (B, L) bool, "index": (B,)}``.

    Every process walks the *same* deterministic sequence stream, takes ``B`` sequences per
    step and materialises only its own rows (``process_rows``) before assembling the global
    ``jax.Array`` with ``jax.make_array_from_process_local_data``. This needs no
    coordination between hosts and gives the same global batch for any process count, at
    the cost of every host tokenizing the whole stream (cheap next to a train step).
    ``index`` is the global example counter ``step * B + row``, the key for per-example
    randomness.
    """

    def __init__(self, sequences: PackedSequences, global_batch_size: int, mesh: Mesh):
        """Raises ``ValueError`` if ``global_batch_size`` is not a positive multiple of the
        process count and of the mesh's batch-axis size."""
        if not isinstance(global_batch_size, int) or global_batch_size < 1:
            raise ValueError(
                f"global_batch_size must be a positive integer, got {global_batch_size!r}"
            )
        processes = jax.process_count()
        if global_batch_size % processes:
            raise ValueError(
                f"global_batch_size={global_batch_size} is not divisible by the number of "
                f"JAX processes ({processes})"
            )
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        if global_batch_size % shards:
            raise ValueError(
                f"global_batch_size={global_batch_size} is not divisible by the mesh's batch "
                f"axes data x fsdp = {shards}"
            )
        self.sequences, self.global_batch_size, self.mesh = sequences, global_batch_size, mesh
        self.rows = process_rows(mesh, global_batch_size)
        self.step = 0

    def __iter__(self):
        return self

    def next_local(self) -> dict[str, np.ndarray]:
        """This process's rows of the next global batch, as numpy arrays (advances)."""
        examples = [next(self.sequences) for _ in range(self.global_batch_size)]
        index_B = self.step * self.global_batch_size + np.arange(self.global_batch_size)
        self.step += 1
        return {
            "tokens": np.stack([examples[r].tokens_L for r in self.rows]),
            "loss_mask": np.stack([examples[r].loss_mask_L for r in self.rows]),
            "index": index_B[self.rows].astype(np.int32),
        }

    def __next__(self) -> dict[str, jax.Array]:
        state = self.get_state()
        try:
            local = self.next_local()
        except StopIteration:
            self.set_state(state)  # a partial final batch is dropped, not consumed
            raise
        return {
            key: jax.make_array_from_process_local_data(
                batch_sharding(self.mesh, value.ndim),
                value,
                (self.global_batch_size, *value.shape[1:]),
            )
            for key, value in local.items()
        }

    def get_state(self) -> dict:
        return {
            "step": self.step,
            "global_batch_size": self.global_batch_size,
            "sequences": self.sequences.get_state(),
        }

    def set_state(self, state: dict) -> None:
        if state.get("global_batch_size") != self.global_batch_size:
            raise ValueError(
                f"iterator state has global_batch_size={state.get('global_batch_size')!r} but "
                f"this iterator has {self.global_batch_size}"
            )
        self.sequences.set_state(state["sequences"])
        self.step = int(state["step"])
