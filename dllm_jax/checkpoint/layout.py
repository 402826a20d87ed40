"""What a checkpoint directory holds on disk: step directories, their completeness, names.

A step ``<n>/`` is complete when orbax's commit marker, the ``state`` and ``meta`` items
exist and every file has the size recorded in ``dllm_manifest.json`` (written after the
commit). These checks are cheap (no array is read); the fingerprints of ``integrity``
catch what they cannot.
"""

from __future__ import annotations

import json
import re

import orbax.checkpoint as ocp
from etils import epath

FORMAT = 1
MANIFEST = "dllm_manifest.json"
META_FILE = "meta/metadata"  # where ocp.args.JsonSave puts the "meta" item
COMMIT_MARKER = ocp.path.atomicity_types.COMMIT_SUCCESS_FILE  # "commit_success.txt"
TMP_SUFFIX = ocp.path.step.TMP_DIR_SUFFIX  # ".orbax-checkpoint-tmp"
_STEP_RE = re.compile(r"(\d+)(" + re.escape(TMP_SUFFIX) + r".*)?")
NO_SUCH_STEP = "no such step"
DAMAGED_SUFFIX = ".damaged"  # a damaged step set aside by a new save of the same step


def step_meta(leaves: dict, metadata: dict, metrics: dict | None) -> dict:
    """The JSON a step stores beside its arrays; refused (nothing written) unless it and the
    metrics are JSON-serialisable."""
    meta = {"format": FORMAT, "metadata": metadata, "leaves": leaves}
    try:
        json.dumps(meta)
        json.dumps(metrics)
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint metadata and metrics must be JSON-serialisable: {e}") from e
    return meta


def write_manifest(root: epath.Path) -> None:
    """Record the size of every file of the committed step directory ``root`` (atomically)."""
    sizes = {}
    for dirpath, _, files in root.walk():
        for name in files:
            rel = str((dirpath / name).relative_to(root))
            sizes[rel] = (dirpath / name).stat().length
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(sizes, sort_keys=True))
    tmp.rename(root / MANIFEST)


def step_problem(directory: epath.Path, step: int) -> str | None:
    """Why ``step`` is not a complete checkpoint, or None if it is (cheap checks only)."""
    root = directory / str(step)
    if not root.is_dir():
        tmp = [p.name for p in directory.glob(f"{step}{TMP_SUFFIX}*")]
        if tmp:
            return f"interrupted save: only the temporary directory {tmp[0]} exists"
        return NO_SUCH_STEP
    if not (root / COMMIT_MARKER).exists():
        return f"no commit marker {COMMIT_MARKER}: the save did not finish"
    for item in ("state", META_FILE):
        if not (root / item).exists():
            return f"{item} is missing"
    if (root / MANIFEST).exists():
        try:
            sizes = json.loads((root / MANIFEST).read_text())
        except ValueError:
            return f"{MANIFEST} is unreadable"
        for rel, size in sizes.items():
            path = root / rel
            if not path.exists():
                return f"file {rel} is missing"
            if path.stat().length != size:
                return f"file {rel} has {path.stat().length} bytes, {size} were written"
    return None


def step_numbers(directory: epath.Path) -> list[int]:
    """Every step with a directory (finished, temporary or damaged-looking), ascending."""
    if not directory.is_dir():
        return []
    return sorted({int(m[1]) for p in directory.iterdir() if (m := _STEP_RE.fullmatch(p.name))})


def damaged_name(directory: epath.Path, step: int) -> epath.Path:
    """A free ``<step>.damaged[-n]`` path to set a damaged step aside under."""
    target = directory / f"{step}{DAMAGED_SUFFIX}"
    n = 1
    while target.exists():
        n += 1
        target = directory / f"{step}{DAMAGED_SUFFIX}-{n}"
    return target


def nothing_message(directory, scan: dict[int, str | None]) -> str:
    """Why no step of ``directory`` can be restored, from its ``{step: problem}`` scan."""
    if not scan:
        return f"no checkpoint in {directory} (the directory has no step directories)"
    bad = "; ".join(f"step {s}: {p}" for s, p in scan.items())
    return f"no complete checkpoint in {directory} ({bad})"
