"""Metrics to a JSONL file and to TensorBoard event files, written without TensorFlow.

An event file is a TFRecord stream of ``Event`` protos: each record is
``uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)``.
We encode the three messages we need (Event, Summary, Summary.Value with simple_value or a
text tensor is not needed) by hand: a few varints, doubles and length-delimited fields.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from pathlib import Path

_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint((number << 3) | wire) + payload


def _bytes_field(number: int, data: bytes) -> bytes:
    return _field(number, 2, _varint(len(data)) + data)


def encode_event(wall_time: float, step: int, scalars: dict[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
    """Serialise an ``Event`` (tensorflow/core/util/event.proto)."""
    msg = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if file_version is not None:
        msg += _bytes_field(3, file_version.encode())
    if scalars:
        values = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", float(v))))
            for tag, v in scalars.items()
        )
        msg += _bytes_field(5, values)
    return msg


def tfrecord(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


class MetricsLogger:
    """Appends metrics to ``metrics.jsonl`` and a TensorBoard event file in ``directory``.

    Only the JAX process 0 should write (pass ``enabled=False`` elsewhere).
    """

    def __init__(self, directory: str | os.PathLike, enabled: bool = True):
        self.enabled = enabled
        self.directory = Path(directory)
        if not enabled:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.directory / "metrics.jsonl", "a", encoding="utf-8")
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self._events = open(self.directory / name, "ab")
        self._events.write(tfrecord(encode_event(time.time(), 0, file_version="brain.Event:2")))

    def log(self, step: int, scalars: dict[str, float], **extra) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}, **extra}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        self._events.write(tfrecord(encode_event(time.time(), int(step), scalars)))
        self._events.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._events.close()
