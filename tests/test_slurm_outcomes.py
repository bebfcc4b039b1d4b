"""On a real local Slurm: outcomes that never lie (a node failure, a job stopped early by the
time-limit warning, a slow teardown after it, a stop Slurm could not take, an --exec script)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from conftest import Sandbox, wait_state, wait_until
from test_slurm import box, slurm_conf  # noqa: F401  (fixtures shared with the Slurm tests)

pytestmark = pytest.mark.slurm

SLEEP_EXIT = """
import sys, time
time.sleep(float(sys.argv[1]))
sys.exit(int(sys.argv[2]))
"""


def _slurm(sb: Sandbox, *argv: str) -> str:
    env = {**os.environ, **sb.env}
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def node(box: Sandbox) -> Iterator[str]:  # noqa: F811
    """The local cluster's node; set back to service after the test (it may take it down)."""
    name = _slurm(box, "sinfo", "-h", "-N", "-o", "%N").split()[0]
    yield name
    subprocess.run(
        ["scontrol", "update", f"nodename={name}", "state=resume"],
        env={**os.environ, **box.env},
        capture_output=True,
    )

    def idle() -> bool:
        return "idle" in _slurm(box, "sinfo", "-h", "-N", "-o", "%t") or "mix" in _slurm(
            box, "sinfo", "-h", "-N", "-o", "%t"
        )

    wait_until(idle, 60, 0.5, "the node back in service")


def test_a_node_failure_is_lost_with_no_exit_code_and_wait_fails(box: Sandbox, node: str) -> None:  # noqa: F811
    box.write("job.py", SLEEP_EXIT)
    box.cli("start", "job.py", "300", "0", "--slurm", "--cpu", "--name", "nf", check=True)
    wait_state(box, "nf", "running", timeout=90)
    _slurm(box, "scontrol", "update", f"nodename={node}", "state=down", "reason=handyjobs-test")
    rec = wait_state(box, "nf", "lost", "failed", "succeeded", "stopped", timeout=90)
    assert rec["state"] == "lost", rec
    assert rec["exit_code"] is None, rec  # srun's 0 is not the outcome of a lost run
    proc = box.cli("wait", "nf", "--timeout", "10")
    assert proc.returncode not in (0, 124), proc.stdout
