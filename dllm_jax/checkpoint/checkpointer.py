"""The ``Checkpointer`` class (see the package docstring for the layout and completeness)."""

from __future__ import annotations

import json
import operator
import os
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from dllm_jax.checkpoint.integrity import abstract_leaf, check_target, describe
from dllm_jax.checkpoint.layout import (
    COMMIT_MARKER,
    FORMAT,
    META_FILE,
    NO_SUCH_STEP,
    damaged_name,
    nothing_message,
    step_meta,
    step_numbers,
    step_problem,
    write_manifest,
)
from dllm_jax.checkpoint.multihost import all_processes as _all_processes
from dllm_jax.checkpoint.multihost import primary_steps as _primary_steps


class CorruptCheckpointError(RuntimeError):
    """A checkpoint step exists but is incomplete or damaged."""


class IncompleteCheckpointWarning(UserWarning):
    """A checkpoint step was skipped because it is incomplete or damaged."""


class _UnrecoverableError(CorruptCheckpointError):
    """A read failed on this process in a multi-process restore: no fallback is safe."""


class Checkpointer:
    """Saves and restores pytrees (with their shardings) plus JSON metadata, by step.

    Keeps the last ``max_to_keep`` steps and, with ``best_metric``, also the best step by
    ``metrics[best_metric]`` (``best_mode`` "min" or "max"). Nothing saved is overwritten:
    saving an existing step raises unless ``force=True``. Use as a context manager or call
    ``close()`` so that an asynchronous save finishes.

    Args:
      directory: root directory (local path or anything ``etils.epath`` opens, e.g. gs://).
        It is created by the first ``save``, never by reading.
      max_to_keep: number of most recent steps kept (None: all).
      best_metric: name of the metric that ranks steps; the best one is kept in addition.
      best_mode: "min" or "max".
      async_save: write in a background thread; ``save`` returns once arrays are copied.
    """

    def __init__(
        self,
        directory,
        *,
        max_to_keep: int | None = 3,
        best_metric: str | None = None,
        best_mode: str = "min",
        async_save: bool = False,
    ):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
        path = epath.Path(directory)
        # Orbax requires absolute local paths; remote ones (gs://...) already are.
        self.directory = path if "://" in str(directory) else epath.Path(os.path.abspath(directory))
        self._max_to_keep = max_to_keep
        self._best_metric = best_metric
        self._best_mode = best_mode
        self._async = async_save
        self._manager_: ocp.CheckpointManager | None = None
        self._pending: int | None = None  # step whose manifest is still to be written
        self._damaged: dict[int, str] = {}  # steps found damaged on restore in this session
        self._warned: set[tuple[int, str]] = set()

    # --- orbax plumbing -------------------------------------------------------------------

    @property
    def _manager(self) -> ocp.CheckpointManager:
        if self._manager_ is None:
            policies = [ocp.checkpoint_managers.LatestN(n=self._max_to_keep)]
            best_fn = None
            if self._best_metric is not None:
                name = self._best_metric
                best_fn = lambda metrics: float(metrics[name])
                # orbax alone keeps the N *best* with best_fn: keep the last N, plus the best.
                policies.append(
                    ocp.checkpoint_managers.BestN(
                        get_metric_fn=best_fn,
                        reverse=self._best_mode == "min",
                        n=1,
                        keep_checkpoints_without_metrics=False,
                    )
                )
            options = ocp.CheckpointManagerOptions(
                preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
                best_fn=best_fn,
                best_mode=self._best_mode,
                enable_async_checkpointing=self._async,
            )
            self._manager_ = ocp.CheckpointManager(self.directory, options=options)
        return self._manager_

    def _flush(self):
        """Wait for an asynchronous save, then write its manifest."""
        if self._manager_ is not None:
            self._manager_.wait_until_finished()
        if self._pending is not None:
            step, self._pending = self._pending, None
            if ocp.multihost.is_primary_host(0) and (self._step_dir(step) / COMMIT_MARKER).exists():
                self._write_manifest(step)

    def _step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def _write_manifest(self, step: int):
        write_manifest(self._step_dir(step))

    # --- completeness ---------------------------------------------------------------------

    def _problem(self, step: int) -> str | None:
        """Why ``step`` is not a complete checkpoint, or None if it is (cheap checks only)."""
        if step in self._damaged:
            return self._damaged[step]
        return step_problem(self.directory, step)

    def _scan(self) -> dict[int, str | None]:
        """{step: problem or None} for every step directory, finished or not."""
        return {s: self._problem(s) for s in step_numbers(self.directory)}

    def _warn(self, step: int, problem: str, once: bool = True):
        """Warn that ``step`` is skipped; listings warn once, every restore warns."""
        if not once or (step, problem) not in self._warned:
            self._warned.add((step, problem))
            warnings.warn(
                f"checkpoint step {step} in {self.directory} is skipped: {problem}",
                IncompleteCheckpointWarning,
                stacklevel=3,
            )

    def all_steps(self) -> list[int]:
        """Steps of complete checkpoints, ascending; warns once about each incomplete one."""
        good = []
        for step, problem in self._scan().items():
            if problem is None:
                good.append(step)
            elif step != self._pending:  # an asynchronous save still being written
                self._warn(step, problem)
        return good

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The complete step with the best ``best_metric``; None if unset or none has it."""
        if self._best_metric is None or not self.directory.is_dir():
            return None
        scored = []
        for step in self.all_steps():
            metrics = self._manager.metrics(step)
            if metrics is not None and self._best_metric in metrics:
                scored.append((float(metrics[self._best_metric]), step))
        if not scored:
            return None
        return (min if self._best_mode == "min" else max)(scored)[1]

    # --- save -----------------------------------------------------------------------------

    def save(
        self, step: int, tree, metadata: dict, metrics: dict | None = None, force: bool = False
    ) -> bool:
        """Save ``tree`` (any pytree of arrays) and JSON ``metadata`` as ``step``.

        Args:
          step: non-negative step number.
          tree: pytree of jax/numpy arrays and scalars; shardings are recorded.
          metadata: JSON-serialisable dict (config, data position, ...).
          metrics: scalar metrics; ``metrics[best_metric]`` ranks the step when set.
          force: replace an existing ``step``. orbax cannot write into an existing step, so
            the old one is deleted first; other steps are never touched.

        Returns:
          True (a checkpoint was written or, with ``async_save``, started).

        Raises:
          FileExistsError: ``step`` exists and ``force`` is False; nothing is written.
          TypeError: ``metadata`` or ``metrics`` is not JSON-serialisable.
          ValueError: bad ``step``, or ``metrics`` lacks ``best_metric``.
        """
        step = operator.index(step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self._best_metric is not None and metrics is not None and self._best_metric not in metrics:
            raise ValueError(f"metrics {sorted(metrics)} lack best_metric {self._best_metric!r}")
        meta = step_meta(describe(tree), metadata, metrics)
        self._flush()
        if self._step_dir(step).exists() and (problem := self._problem(step)) is not None:
            self._set_aside(step, problem)
        if self._step_dir(step).exists():
            if not force:
                raise FileExistsError(
                    f"checkpoint step {step} already exists in {self.directory}; nothing was "
                    "written (pass force=True to replace it)"
                )
            self._manager.reload()
            self._manager.delete(step)
        args = ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta))
        self._manager.save(
            step, args=args, metrics=metrics if self._best_metric else None, force=True
        )
        self._pending = step
        if not self._async:
            self._flush()
        return True

    def _set_aside(self, step: int, problem: str):
        """Move a damaged ``step`` to ``<step>.damaged[-n]`` so a new save can take its place.

        Resuming over a damaged latest checkpoint falls back to the previous one and trains
        to the damaged step again; replacing it is the only way forward, and nothing is
        deleted (the bad files stay for inspection beside the good steps).
        """
        target = damaged_name(self.directory, step)
        if jax.process_index() == 0:
            self._step_dir(step).rename(target)
        _all_processes(True)  # every process sees the move before the manager rescans
        warnings.warn(
            f"checkpoint step {step} in {self.directory} was damaged ({problem}); it was moved to "
            f"{target.name} and is replaced by the new save",
            IncompleteCheckpointWarning,
            stacklevel=3,
        )
        self._damaged.pop(step, None)
        self._manager.reload()

    # --- restore --------------------------------------------------------------------------

    def _require_checkpoints(self):
        if not self.directory.is_dir():
            raise FileNotFoundError(f"checkpoint directory {self.directory} does not exist")

    def _read_meta(self, step: int) -> dict:
        """The step's JSON item, read directly (no orbax barriers, so that a failure on one
        process can be agreed on); CorruptCheckpointError on every process if any fails."""
        meta, error = None, None
        try:
            meta = json.loads((self._step_dir(step) / META_FILE).read_text())
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                error = f"{META_FILE} is not dllm_jax checkpoint metadata (format {FORMAT})"
        except Exception as e:  # noqa: BLE001 - any read failure means a damaged step
            error = f"{META_FILE} unreadable ({_short(e)})"
        if not _all_processes(error is None):
            raise CorruptCheckpointError(error or f"{META_FILE} unreadable on another process")
        return meta

    def _restore_step(self, step: int, abstract) -> tuple[Any, dict]:
        """Restore one step; CorruptCheckpointError for damage, ValueError for a wrong target."""
        meta = self._read_meta(step)
        check_target(step, abstract, meta["leaves"])
        try:
            args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            tree = self._manager.restore(step, args=args)["state"]
        except Exception as e:  # noqa: BLE001 - tensorstore/orbax read errors
            # orbax's restore ends in a barrier that a failing process skips: with several
            # processes they may now be out of step, so no fallback is attempted.
            kind = _UnrecoverableError if jax.process_count() > 1 else CorruptCheckpointError
            raise kind(f"arrays unreadable ({_short(e)})") from e
        got = describe(tree)  # global reductions: the same on every process
        bad = [
            k
            for k, want in meta["leaves"].items()
            if want["hash"] is not None
            and got[k]["dtype"] == want["dtype"]
            and got[k]["hash"] != want["hash"]
        ]
        if bad:
            raise CorruptCheckpointError(f"restored values differ from those saved in {bad[:5]}")
        return tree, meta["metadata"]

    def restore(self, target, step: int | None = None) -> tuple[Any, dict]:
        """Restore a step into the shapes, dtypes and shardings of ``target``.

        Args:
          target: pytree like the saved one, of ``jax.ShapeDtypeStruct`` with ``.sharding``
            or of concrete arrays (their shardings are used); any mesh shape.
          step: the step; None: the latest complete one, falling back (with a warning naming
            the bad step) past steps that turn out damaged.

        Returns:
          (tree, metadata).

        Raises:
          FileNotFoundError: no directory, no complete checkpoint, or no such ``step``.
          CorruptCheckpointError: ``step`` given and damaged, or every step is damaged.
          ValueError: ``target``'s leaves or shapes differ from the checkpoint's.
        """
        self._flush()
        self._require_checkpoints()
        abstract = jax.tree.map(abstract_leaf, target)
        if step is not None:
            return self._restore_explicit(operator.index(step), abstract)
        scan = self._scan()
        good = _primary_steps([s for s, problem in scan.items() if problem is None])
        if not good:
            raise FileNotFoundError(nothing_message(self.directory, scan))
        for s, problem in scan.items():
            if problem is not None and s > good[-1]:
                self._warn(s, problem, once=False)
        errors = []
        for s in reversed(good):
            try:
                return self._restore_step(s, abstract)
            except _UnrecoverableError as e:
                raise CorruptCheckpointError(f"checkpoint step {s} in {self.directory}: {e}") from e
            except CorruptCheckpointError as e:
                self._damaged[s] = str(e)
                self._warn(s, str(e), once=False)
                errors.append(f"step {s}: {e}")
        raise CorruptCheckpointError(
            f"no checkpoint in {self.directory} could be restored: " + "; ".join(errors)
        )

    def _require_step(self, step: int):
        """Raise unless ``step`` passes the cheap completeness checks."""
        problem = self._problem(step)
        if problem == NO_SUCH_STEP:
            raise FileNotFoundError(
                f"checkpoint step {step} not found in {self.directory}; complete steps: "
                f"{self.all_steps()}"
            )
        if problem is not None:
            raise CorruptCheckpointError(f"checkpoint step {step} in {self.directory}: {problem}")

    def _restore_explicit(self, step: int, abstract):
        self._require_step(step)
        try:
            return self._restore_step(step, abstract)
        except CorruptCheckpointError as e:
            self._damaged[step] = str(e)
            raise CorruptCheckpointError(f"checkpoint step {step} in {self.directory}: {e}") from e

    def metadata(self, step: int | None = None) -> dict:
        """The JSON metadata of ``step`` (default: latest complete step) without the arrays."""
        self._flush()
        self._require_checkpoints()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(nothing_message(self.directory, self._scan()))
        self._require_step(step)
        try:
            return self._read_meta(step)["metadata"]
        except CorruptCheckpointError as e:
            raise CorruptCheckpointError(f"checkpoint step {step} in {self.directory}: {e}") from e

    # --- lifetime -------------------------------------------------------------------------

    def wait(self):
        """Block until an asynchronous save has been committed."""
        self._flush()

    def close(self):
        self._flush()
        if self._manager_ is not None:
            self._manager_.close()
            self._manager_ = None

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc):
        self.close()


def _short(e: Exception) -> str:
    """First line of an error, capped (tensorstore errors embed whole specs)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:200]}"
