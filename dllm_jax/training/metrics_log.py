"""Metrics to a JSONL file and to TensorBoard event files (tensorboardX: no TensorFlow)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tensorboardX import SummaryWriter


class MetricsLogger:
    """Appends metrics to ``metrics.jsonl`` and TensorBoard event files in ``directory``.

    Scalars go to both; ``extra`` keyword values (e.g. ``samples``) go to the JSONL record, and
    a ``samples`` dict ``{steps: [texts]}`` also to TensorBoard's text tab. Only the JAX
    process 0 should write (pass ``enabled=False`` elsewhere).
    """

    def __init__(self, directory: str | os.PathLike, enabled: bool = True):
        self.enabled = enabled
        self.directory = Path(directory)
        if not enabled:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.directory / "metrics.jsonl", "a", encoding="utf-8")
        self._tb = SummaryWriter(logdir=str(self.directory), flush_secs=10)

    def log(self, step: int, scalars: dict[str, float], **extra) -> None:
        if not self.enabled:
            return
        step = int(step)
        record = {"step": step, **{k: float(v) for k, v in scalars.items()}, **extra}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for tag, value in scalars.items():
            self._tb.add_scalar(tag, float(value), step)
        for steps, texts in (extra.get("samples") or {}).items():
            self._tb.add_text(f"samples/K={steps}", "\n\n".join(f"    {t!r}" for t in texts), step)
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
