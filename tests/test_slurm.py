"""A real one-node Slurm (scripts/slurm-local.sh): jobs submitted with ``--slurm`` end as Slurm
ran them, a job held PENDING shows ``queued`` with Slurm's reason, ``stop`` cancels."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Sandbox, log_of, show, wait_state, wait_until

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def slurm_conf() -> Iterator[str]:
    """The local cluster's SLURM_CONF; the tests skip with the script's reason when it can't."""
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "slurm-local.sh"), "start"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        pytest.skip(f"local Slurm did not start: {proc.stderr.strip().splitlines()[-1:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("SLURM_CONF=")][-1]
    yield line.split("=", 1)[1]


@pytest.fixture
def box(sandbox: Sandbox, slurm_conf: str) -> Iterator[Sandbox]:
    """A sandbox whose CLI talks to the local Slurm; its Slurm jobs are cancelled afterwards."""
    sandbox.env["SLURM_CONF"] = slurm_conf
    yield sandbox
    ids = [r.get("runs", [{}])[-1] for r in _records(sandbox)]
    for run in ids:
        job_id = (run.get("handle") or {}).get("job_id")
        if job_id:
            subprocess.run(["scancel", job_id], env={**os.environ, "SLURM_CONF": slurm_conf})


def _records(box: Sandbox) -> list[dict[str, Any]]:
    out = box.cli("list", "--all", "--json").stdout
    import json

    try:
        return list(json.loads(out))
    except ValueError:
        return []


RANKS = """
import os, sys
print("rank", os.environ["RANK"], "of", os.environ["WORLD_SIZE"], flush=True)
sys.exit(int(sys.argv[1]))
"""

FOREVER = """
import time
while True:
    time.sleep(0.2)
"""


def test_two_process_job_succeeds_with_its_output_in_logs(box: Sandbox) -> None:
    box.write("ranks.py", RANKS)
    box.cli(
        "start", "ranks.py", "0", "--slurm", "--nodes", "1", "--cpu", "--nproc", "2", check=True
    )
    rec = wait_state(box, "ranks-1", "succeeded", "failed", "lost", timeout=90)
    assert rec["state"] == "succeeded", log_of(box, "ranks-1")
    log = log_of(box, "ranks-1")
    assert "rank 0 of 2" in log and "rank 1 of 2" in log


def test_failing_job_reports_its_exit_code(box: Sandbox) -> None:
    box.write("ranks.py", RANKS)
    box.cli(
        "start", "ranks.py", "3", "--slurm", "--nodes", "1", "--cpu", "--nproc", "2", check=True
    )
    rec = wait_state(box, "ranks-1", "succeeded", "failed", "lost", timeout=90)
    assert rec["state"] == "failed"
    # torchrun reports a failed worker as exit code 1 (the worker's own code is in the log).
    assert rec["exit_code"] not in (None, 0)


def test_stop_cancels_a_running_job_and_nothing_remains(box: Sandbox) -> None:
    box.write("forever.py", FOREVER)
    box.cli("start", "forever.py", "--slurm", "--nodes", "1", "--cpu", "--nproc", "2", check=True)
    wait_state(box, "forever-1", "running", timeout=90)
    job_id = show(box, "forever-1")["runs"][-1]["handle"]["job_id"]
    out = box.cli("stop", "forever-1", check=True).stdout
    assert "cancelled" in out
    assert show(box, "forever-1")["state"] == "stopped"
    squeue = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-t", "PENDING,RUNNING,COMPLETING"],
        env={**os.environ, **box.env},
        capture_output=True,
        text=True,
    )
    assert squeue.stdout.strip() == ""

    def gone() -> bool:
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        return str(box.root / "forever.py") not in ps

    wait_until(gone, 30, 0.2, "the job's processes to end")


def test_pending_job_is_queued_with_slurms_reason(box: Sandbox) -> None:
    box.write("forever.py", FOREVER)
    # More CPUs than the node has: Slurm keeps it PENDING and says why.
    box.cli(
        "start", "forever.py", "--slurm", "--nodes", "1", "--cpu", "--nproc", "1",
        "--slurm-arg=--cpus-per-task=4096", check=True,
    )  # fmt: skip

    def reason() -> str | None:
        rec = show(box, "forever-1")
        wait = rec.get("wait") or {}
        return wait.get("reason") if rec["state"] == "queued" else None

    why = wait_until(reason, 30, 0.5, "Slurm's reason")
    assert why and why != "None"
    assert f"Slurm: {why}" in box.cli("list", check=True).stdout


def test_slurm_with_gpus_is_refused_in_one_line(box: Sandbox) -> None:
    box.write("forever.py", FOREVER)
    proc = box.cli("start", "forever.py", "--slurm", "--gpus", "0,1")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
