"""The Colab notebooks execute top to bottom on CPU with a shrunken config, from a wheel.

As on Colab: the package is built into a wheel and installed (here into a fresh target
folder, without dependencies, which the test venv already has), and the notebooks run from
a directory outside the checkout, so nothing is imported from the source tree.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# What each notebook must print (its last steps ran): the default is the sampling notebooks'.
MARKERS = {"tool_use.ipynb": ("validation:", "network passes", "well_formed_calls", "resume_same_tokens")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A non-editable install of the wheel built from a copy of the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "benchmarks"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("dllm_jax-*.whl")
    target = tmp / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True, cwd=tmp)
    return target


def test_console_scripts_are_installed(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    for script in ("dllm-train", "dllm-sample", "dllm-evaluate", "dllm-quickstart", "dllm-sft", "dllm-chat"):
        out = subprocess.run([str(installed / "bin" / script), "--help"], capture_output=True, text=True,
                             env=env, cwd=tmp_path)
        assert out.returncode == 0 and "usage:" in out.stdout, (script, out.stderr[-2000:])


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes_from_the_installed_wheel(path, installed, monkeypatch, tmp_path):
    monkeypatch.setenv("DLLM_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", str(installed))  # the kernel sees the wheel, not the checkout
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import dllm_jax, experiments\nprint('IMPORTED FROM', dllm_jax.__file__, experiments.__file__)"))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    for marker in MARKERS.get(path.name, ("validation:", "judge NLL")):
        assert marker in outputs, marker
    origin = outputs.split("IMPORTED FROM", 1)[1].split()
    assert all(Path(p).is_relative_to(installed) for p in origin), origin
    if path.name == "steps_tradeoff.ipynb":  # the sweep's two plots were displayed
        images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        assert len(images) == 2
