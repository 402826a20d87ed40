"""Two JAX processes on loopback (CPU collectives), 2 devices each, equal one process with 4."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).with_name("multihost_check.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(num_processes: int, local_devices: int, steps: int):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen([sys.executable, str(SCRIPT), str(num_processes), str(i), str(port),
                          str(local_devices), str(steps)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(num_processes)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-4000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


@pytest.mark.multidevice
@pytest.mark.slow
def test_two_processes_match_one():
    (single,) = launch(1, 4, steps=4)
    multi = launch(2, 2, steps=4)
    print("1 process x 4 devices:", np.round(single["losses"], 6))
    for r in multi:
        print(f"process {r['process']} of 2 x 2 devices:", np.round(r["losses"], 6))
        np.testing.assert_allclose(r["losses"], single["losses"], rtol=1e-5)
        np.testing.assert_allclose(r["param_sq_norm"], single["param_sq_norm"], rtol=1e-5)
    assert single["losses"][-1] < single["losses"][0]
