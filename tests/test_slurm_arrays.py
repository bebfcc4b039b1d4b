"""On a real local Slurm: ``sweep --slurm`` is one job array with a throttle, each point still a
job of its own (its log, its state, its stop), and a refused array leaves nothing behind."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from conftest import Sandbox, log_of, max_overlap, show, wait_state, wait_until
from test_slurm import FOREVER, box, slurm_conf, slurm_out  # noqa: F401  (fixtures shared with the Slurm tests)

pytestmark = pytest.mark.slurm

# Notes when it ran (wall clock) and with which value, then sleeps a moment.
STAMPED = """
import json, os, sys, time
start = time.time()
lr = os.environ.get("HANDYJOBS_PARAM_LR")
print("lr is", lr, sys.argv[1:], flush=True)
time.sleep(2)
with open(os.environ["STAMPS"], "a") as f:
    f.write(json.dumps({"lr": lr, "start": start,
                        "end": time.time()}) + "\\n")
"""

def _tasks(sb: Sandbox, array: str) -> dict[str, str]:
    """Slurm's state of each task of the array still listed: ``{"0": "RUNNING", ...}``."""
    out = slurm_out(sb, "squeue", "-r", "-h", "-j", array, "-O", "JobArrayID:|,State:|")
    return {
        line.split("|")[0].partition("_")[2]: line.split("|")[1]
        for line in out.splitlines()
        if "_" in line.split("|")[0]
    }


def _job_id(sb: Sandbox, name: str) -> str:
    return str(show(sb, name)["runs"][-1]["handle"]["job_id"])


def test_a_sweep_is_one_throttled_array_whose_points_are_jobs(box: Sandbox) -> None:  # noqa: F811
    box.write("lr.py", STAMPED)
    stamps = box.root / "stamps.jsonl"
    out = box.cli(
        "sweep", "lr.py", "--grid", "lr=1,2,3,4", "--slurm", "--cpu", "--parallel", "2",
        env={"STAMPS": str(stamps)}, check=True,
    ).stdout  # fmt: skip
    assert "sweep lr-sweep: 4 jobs" in out
    names = [f"lr-lr{i}" for i in range(1, 5)]
    ids = [_job_id(box, name) for name in names]
    array = ids[0].partition("_")[0]
    assert ids == [f"{array}_{i}" for i in range(4)]
    said = slurm_out(box, "scontrol", "show", "job", "-o", array)
    assert "ArrayTaskThrottle=2" in said and "JobName=lr-sweep" in said
    # While they run, Slurm never runs more than two of them.
    most = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        tasks = _tasks(box, array)
        most = max(most, list(tasks.values()).count("RUNNING"))
        if not tasks:  # squeue lists pending, running and completing tasks
            break
        time.sleep(0.2)
    assert 1 <= most <= 2
    for name, value in zip(names, "1234", strict=True):
        rec = wait_state(box, name, "succeeded", "failed", "lost", timeout=60)
        assert rec["state"] == "succeeded", log_of(box, name)
        log = log_of(box, name)
        assert f"lr is {value} ['--lr={value}']" in log
        # The log's header names the task as the job's handle does.
        assert f"Slurm job {array}_{int(value) - 1} (" in log
    runs = [json.loads(line) for line in stamps.read_text().splitlines()]
    assert sorted(str(r["lr"]) for r in runs) == ["1", "2", "3", "4"]
    assert max_overlap(runs) <= 2
    listed = json.loads(box.cli("list", "--group", "lr-sweep", "--json", check=True).stdout)
    assert sorted(job["name"] for job in listed) == names
    # A point started again alone is a job of its own, not a task of an array.
    box.cli("start", "--like", "lr-lr3", "--name", "again", env={"STAMPS": str(stamps)}, check=True)
    rec = wait_state(box, "again", "succeeded", "failed", "lost", timeout=60)
    assert rec["state"] == "succeeded", log_of(box, "again")
    assert rec["runs"][-1]["handle"]["job_id"].isdigit()
    assert "['--lr=3']" in log_of(box, "again")


def test_stop_of_one_point_cancels_that_task_alone(box: Sandbox) -> None:  # noqa: F811
    box.write("forever.py", FOREVER)
    box.cli(
        "sweep", "forever.py", "--grid", "n=1,2,3", "--slurm", "--cpu", "--parallel", "1",
        check=True,
    )  # fmt: skip
    first, second, third = "forever-n1", "forever-n2", "forever-n3"
    array = _job_id(box, first).partition("_")[0]
    wait_state(box, first, "running", timeout=60)

    def reason() -> str | None:
        rec = show(box, third)
        return (rec.get("wait") or {}).get("reason") if rec["state"] == "queued" else None

    # Slurm gives a reason once its scheduler has looked at the task (PENDING till then).
    wait_until(lambda: reason() == "JobArrayTaskLimit", 30, 0.5, "the throttle as the reason")
    # A pending point: its task goes, the others stay as they were.
    assert "cancelled" in box.cli("stop", third, check=True).stdout
    assert show(box, third)["state"] == "stopped"
    assert _tasks(box, array) == {"0": "RUNNING", "1": "PENDING"}
    # A running point: its task ends, and the throttle lets the next one start.
    box.cli("stop", first, check=True)
    assert show(box, first)["state"] == "stopped"
    wait_state(box, second, "running", timeout=60)
    assert _tasks(box, array).get("1") == "RUNNING"
    out = box.cli("stop", "--group", "forever-sweep", check=True).stdout
    assert f"Slurm job {array}_1 cancelled" in out
    wait_until(lambda: not _tasks(box, array) or "RUNNING" not in _tasks(box, array).values())


def test_a_refused_array_leaves_no_jobs(box: Sandbox) -> None:  # noqa: F811
    box.write("forever.py", FOREVER)
    done = box.cli(
        "sweep", "forever.py", "--grid", "n=1,2", "--slurm", "--cpu",
        "--slurm-arg=--partition=nope",
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(r"sbatch refused the job: .*partition", lines[0])
    assert json.loads(box.cli("list", "--all", "--json", check=True).stdout) == []
    jobs = Path(box.home) / "jobs"
    assert not jobs.exists() or not list(jobs.iterdir())
