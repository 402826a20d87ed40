"""An imported Hugging Face model is born sharded on a 2x2x2 mesh of 8 fake CPU devices, and
its sharded forward equals the single-device one (``hf_sharded_check.py``, own process)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the test extra installs torch + transformers

SCRIPT = Path(__file__).with_name("hf_sharded_check.py")


@pytest.mark.multidevice
def test_imported_params_are_born_sharded_and_equal_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    wrong = [b for b in res["born"] if not b[3]]
    assert not wrong, wrong
    sharded = {b[0] for b in res["born"] if "fsdp" in b[2] or "tensor" in b[2]}
    # the kv heads (2) split over tensor=2, the vocabulary over tensor, d_model over fsdp
    assert {"blocks.attn.k.kernel", "blocks.attn.v.bias", "embed.table", "head.kernel"} <= sharded, res["born"]
    print("sharded vs one device:", res["max_sharded_vs_single"], "vs transformers:", res["max_vs_transformers"])
    assert res["max_sharded_vs_single"] < 1e-5
    assert res["max_vs_transformers"] < 1e-4
