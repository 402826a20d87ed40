"""Human-written English that ships with every Python: the standard library's docstrings.

Read from the stdlib *source* with ``ast`` (never imported: no side effects, no import
failures, the same on every platform for the same Python version), plus the ``builtins``
docstrings and the ``pydoc_data.topics`` language-reference pages that ``help()`` shows.
"""

from __future__ import annotations

import ast
import builtins
import functools
import inspect
import os
import sysconfig
from collections.abc import Iterable
from pathlib import Path

# Stdlib folders and modules left out of the embedded corpus: tests, GUI code, jokes and
# vendored or generated trees. They are parsed, never imported, so this is about content.
_SKIP_DIRS = frozenset(
    """site-packages dist-packages test tests idle_test idlelib tkinter turtledemo lib2to3
    ensurepip __pycache__ lib-dynload venv __phello__""".split()
)
_SKIP_FILES = frozenset({"antigravity.py", "this.py", "__main__.py", "__hello__.py"})


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _source_docstrings(root: Path) -> Iterable[tuple[str, str]]:
    """(qualified name, docstring) of every module, class and function under ``root``.

    The source is parsed with ``ast``, never imported: no side effects, no import failures,
    and the same result on every platform for the same stdlib sources.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and "-" not in d)
        for filename in sorted(filenames):
            if not filename.endswith(".py") or filename in _SKIP_FILES:
                continue
            if filename.startswith("turtle"):
                continue
            path = Path(dirpath) / filename
            try:
                tree = ast.parse(path.read_bytes())
            except (SyntaxError, ValueError, OSError):
                continue
            stack = [(tree, _module_name(root, path))]
            while stack:
                node, qualname = stack.pop()
                doc = ast.get_docstring(node, clean=True)
                if doc:
                    yield qualname, doc
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        stack.append((child, f"{qualname}.{child.name}"))


def _builtin_docstrings() -> Iterable[tuple[str, str]]:
    """Docstrings of the ``builtins`` module's functions, classes and their methods."""
    for name in sorted(vars(builtins)):
        obj = vars(builtins)[name]
        if not (inspect.isclass(obj) or inspect.isbuiltin(obj)):
            continue
        if isinstance(obj.__doc__, str):
            yield f"builtins.{name}", inspect.cleandoc(obj.__doc__)
        if inspect.isclass(obj):
            for attr, value in sorted(vars(obj).items()):
                doc = getattr(value, "__doc__", None)
                if isinstance(doc, str) and not isinstance(value, str):
                    yield f"builtins.{name}.{attr}", inspect.cleandoc(doc)


def _topic_docstrings() -> Iterable[tuple[str, str]]:
    """The language reference topics shown by ``help()`` (``pydoc_data.topics``)."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield f"pydoc_data.topics.{key}", topics[key]


@functools.cache
def stdlib_documents() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(names, texts) of every stdlib docstring, sorted by name, deduplicated by text.

    The first name (in sorted order) of a repeated text wins; a name defined twice (e.g. in
    both branches of an ``if``) gets ``#2``, ``#3`` suffixes. Cached in memory.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    pairs = [*_source_docstrings(root), *_builtin_docstrings(), *_topic_docstrings()]
    pairs.sort()
    names, texts, seen, uses = [], [], set(), {}
    for name, text in pairs:
        if text.strip() and text not in seen:  # dedupe: the first name (sorted) wins
            seen.add(text)
            uses[name] = uses.get(name, 0) + 1  # a name defined twice (if/else branches)
            names.append(name if uses[name] == 1 else f"{name}#{uses[name]}")
            texts.append(text)
    return tuple(names), tuple(texts)
