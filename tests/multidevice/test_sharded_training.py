"""Sharded training on a 2x2x2 mesh of 8 fake CPU devices equals one device.

The check runs in its own process (``sharded_check.py``) because the fake device count must
be set before JAX is imported.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).with_name("sharded_check.py")


def run_check(process: str, dtype: str, steps: int) -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run(
        [sys.executable, str(SCRIPT), process, dtype, str(steps)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.multidevice
@pytest.mark.parametrize(
    "process,dtype,loss_tol,param_tol",
    [("masked", "float32", 1e-5, 1e-5), ("uniform", "bfloat16", 2e-2, 2e-2)],
)
def test_sharded_matches_single_device(process, dtype, loss_tol, param_tol):
    res = run_check(process, dtype, steps=6)
    print(process, dtype, "losses 1 dev:", np.round(res["losses_1"], 5))
    print(process, dtype, "losses 8 dev:", np.round(res["losses_8"], 5))
    print("max |param diff|", res["max_param_diff"], "max |ema diff|", res["max_ema_diff"])
    # Parameters are born with the shardings their logical axes ask for.
    wrong = [b for b in res["born"] if not b[3]]
    assert not wrong, wrong
    sharded = [b for b in res["born"] if "fsdp" in b[2] or "tensor" in b[2]]
    assert len(sharded) >= 8, res["born"]
    assert res["param_dtypes"] == ["float32"]  # bf16 is a compute dtype only
    np.testing.assert_allclose(res["losses_8"], res["losses_1"], rtol=loss_tol, atol=loss_tol)
    assert res["max_param_diff"] < param_tol
    assert res["max_ema_diff"] < param_tol
    assert res["ema_moved"] > 1e-4  # EMA is a real average, not a copy of the params
    assert res["losses_1"][-1] < res["losses_1"][0]  # the steps train
