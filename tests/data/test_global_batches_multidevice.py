"""Global batches on 8 fake CPU devices hold, device by device, the rows of the one-device
batch. Runs in its own process (``global_batches_check.py``): the fake device count must be
set before JAX is imported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("global_batches_check.py")


@pytest.mark.multidevice
def test_global_batches_on_eight_devices(tokenizer_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(tokenizer_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8
    by_config = {tuple(m["config"]): m for m in result["meshes"]}
    assert by_config[(4, 2, 1)]["spec"] == "P(('data', 'fsdp'), None)"
    assert by_config[(4, 2, 1)]["index_spec"] == "P(('data', 'fsdp'),)"
    assert by_config[(2, 1, 4)]["spec"] == "P('data', None)"
    for mesh in result["meshes"]:
        assert mesh["ok"], mesh
        assert mesh["rows"] == list(range(16))  # one process supplies every row
