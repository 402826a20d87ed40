"""One small wrapper over orbax-checkpoint: any pytree with its shardings, plus JSON metadata.

Generic by design: it saves whatever pytree it is given (train state, EMA, data-iterator
position, ...) and knows nothing of what is in it. Restore goes straight into the shardings
of a target tree, also onto a mesh of another shape than at save time.

A step directory (orbax's layout, plus one file of ours)::

    <directory>/<step>/state/...              the pytree (orbax StandardSave, OCDBT)
    <directory>/<step>/meta/metadata          JSON: caller's metadata + per-leaf fingerprints
    <directory>/<step>/metrics/metrics        JSON metrics (only with ``best_metric``)
    <directory>/<step>/commit_success.txt     orbax's commit marker
    <directory>/<step>/dllm_manifest.json     every file's size, written after the commit

Completeness. orbax 0.12 writes a step into ``<step>.orbax-checkpoint-tmp``, writes
``commit_success.txt`` into it, then renames it to ``<step>`` (on GCS it writes the marker
in place, without a rename). A step counts as complete when its directory has its final
name, the commit marker and, where the manifest exists, every file at its recorded size
(a partial copy, a truncated file). Damage these cheap checks cannot see is caught on
restore: tensorstore raises, or the fingerprint of a restored leaf differs from the one
stored at save time. ``restore()`` with no step then warns, naming the bad step and why, and
falls back to the previous complete one; with an explicit step it raises
``CorruptCheckpointError``.
"""

from dllm_jax.checkpoint.checkpointer import (
    Checkpointer,
    CorruptCheckpointError,
    IncompleteCheckpointWarning,
)
from dllm_jax.checkpoint.layout import (
    COMMIT_MARKER,
    DAMAGED_SUFFIX,
    FORMAT,
    MANIFEST,
    META_FILE,
    TMP_SUFFIX,
)

__all__ = [
    "COMMIT_MARKER",
    "DAMAGED_SUFFIX",
    "FORMAT",
    "MANIFEST",
    "META_FILE",
    "TMP_SUFFIX",
    "Checkpointer",
    "CorruptCheckpointError",
    "IncompleteCheckpointWarning",
]
