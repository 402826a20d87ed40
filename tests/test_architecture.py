"""The import direction of ../shared/DESIGN.md, checked on the source: layers import only
downward, no module imports dllm_jax inside a function (a cycle dodged), and no module
imports another module's private names."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "dllm_jax"

# Lower rank = lower layer. A module may import its own package and lower ranks only.
RANK = {
    "typing": 0, "files": 0, "progress": 0, "rng": 0, "validate": 0,
    "config": 1,
    "diffusion": 2,
    "sharding": 3,
    "nn": 4, "data": 4, "checkpoint": 4,
    "sampling": 5,
    "evaluation": 6,
    "training": 7,
    "tools": 0,
    "agent": 6,
    "demo": 8, "__init__": 8,
}


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        yield name, ast.parse(path.read_text(), str(path))


def _imports(tree):
    """(node, imported module, names, at module level?)"""
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dllm_jax"):
            yield node, node.module, [a.name for a in node.names], id(node) in top or _in_type_checking(tree, node)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("dllm_jax"):
                    yield node, a.name, [], id(node) in top


def _in_type_checking(tree, node) -> bool:
    return any(isinstance(n, ast.If) and node in ast.walk(n) for n in tree.body)


def test_every_layer_is_ranked():
    layers = {_layer(name) for name, _ in _modules()}
    assert layers <= set(RANK), sorted(layers - set(RANK))


def test_imports_run_downward_at_module_level_without_private_names():
    problems = []
    for name, tree in _modules():
        layer = _layer(name)
        for node, target, names, top in _imports(tree):
            where = f"{name}:{node.lineno} imports {target}"
            if not top:
                problems.append(f"{where} inside a function (a deferred import dodging a cycle?)")
            if target in ("dllm_jax",) and layer != "__init__":
                problems.append(f"{where}: import the module that defines it, not the package root")
                continue
            other = _layer(target)
            if other != layer and RANK[other] >= RANK[layer]:
                problems.append(f"{where}: {layer} (rank {RANK[layer]}) may not import {other} (rank {RANK[other]})")
            private = [n for n in names if n.startswith("_")]
            if private and target != name:
                problems.append(f"{where}: private names {private}")
    assert not problems, "\n".join(problems)
