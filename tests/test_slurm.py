"""A real one-node Slurm (scripts/slurm-local.sh): jobs submitted with ``--slurm`` end as Slurm
ran them, a job held PENDING shows ``queued`` with Slurm's reason, ``stop`` cancels."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
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


@pytest.fixture
def nodes_back(box: Sandbox) -> Iterator[None]:
    """Every node of the local cluster back in service after the test (it may take one down)."""
    yield
    for node in ("n1", "n2"):
        subprocess.run(
            ["scontrol", "update", f"nodename={node}", "state=resume"],
            env={**os.environ, **box.env},
            capture_output=True,
        )

    def idle() -> bool:
        states = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%t"],
            env={**os.environ, **box.env},
            capture_output=True,
            text=True,
        ).stdout.split()
        return len(states) == 2 and all(s in ("idle", "mix", "alloc") for s in states)

    wait_until(idle, 60, 0.5, "both nodes back in service")


def slurm_out(sb: Sandbox, *argv: str) -> str:
    """A Slurm command's output, run against the sandbox's cluster (it must succeed)."""
    env = {**os.environ, **sb.env}
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout


def _records(box: Sandbox) -> list[dict[str, Any]]:
    out = box.cli("list", "--all", "--json").stdout
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
    # The job side recorded its end first; show then asks Slurm how it saw that end.
    wait_until(
        lambda: "slurm state    COMPLETED" in box.cli("show", "ranks-1", check=True).stdout,
        30,
        0.5,
        "show to print Slurm's end state",
    )


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
    rec = show(box, "forever-1")
    assert rec["state"] == "stopped", (rec["reason"], log_of(box, "forever-1"))
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


SLEEP_EXIT = """
import sys, time
time.sleep(float(sys.argv[1]))
sys.exit(int(sys.argv[2]))
"""


def test_after_waits_in_slurms_queue_and_fails_to_start_when_its_job_fails(box: Sandbox) -> None:
    box.write("job.py", SLEEP_EXIT)
    box.cli("start", "job.py", "3", "4", "--slurm", "--name", "prep", check=True)
    box.cli("start", "job.py", "0", "0", "--slurm", "--name", "ok", "--after", "prep", check=True)
    box.cli(
        "start", "job.py", "0", "0", "--slurm", "--name", "any", "--after-any", "prep", check=True
    )
    # Waiting on Slurm's side, with Slurm's reason.
    assert "ok: Slurm: Dependency" in box.cli("list", check=True).stdout
    assert wait_state(box, "prep", "failed", timeout=90)["exit_code"] == 4
    ok = wait_state(box, "ok", "failed", "succeeded", "stopped", timeout=60)
    assert ok["state"] == "failed" and ok["runs"][-1]["started_at"] is None
    assert "never started: job prep" in box.cli("show", "ok", check=True).stdout
    assert wait_state(box, "any", "succeeded", "failed", timeout=90)["state"] == "succeeded"
    # Nothing to wait for any more: one line, exit 2, and no job is made.
    proc = box.cli("start", "job.py", "0", "0", "--slurm", "--name", "late", "--after", "prep")
    assert proc.returncode == 2 and "already ended failed" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "late" not in box.cli("list", "--all", check=True).stdout


def test_after_a_job_on_this_machine_is_refused_and_nothing_is_submitted(box: Sandbox) -> None:
    box.write("forever.py", FOREVER)
    box.cli("start", "forever.py", "--cpu", "--name", "here", check=True)
    proc = box.cli("start", "forever.py", "--slurm", "--name", "there", "--after", "here")
    assert proc.returncode == 2 and "runs on this machine" in proc.stderr
    assert "there" not in box.cli("list", "--all", check=True).stdout
    assert not list((box.home / "jobs").glob("there/slurm-*.sbatch"))
    box.cli("stop", "here", check=True)


def test_like_of_a_slurm_job_goes_to_slurm_with_the_options_changed(box: Sandbox) -> None:
    box.write("ranks.py", RANKS)
    box.cli(
        "start", "ranks.py", "0", "--slurm", "--cpu", "--nproc", "2", "--time", "5",
        "--name", "first", check=True,
    )  # fmt: skip
    box.cli("start", "--like", "first", "--name", "again", "--time", "7", check=True)
    rec = wait_state(box, "again", "succeeded", "failed", "lost", timeout=90)
    assert rec["state"] == "succeeded", log_of(box, "again")
    assert rec["runs"][-1]["handle"]["job_id"]
    assert (rec["spec"]["slurm"]["time"], rec["spec"]["nproc"]) == ("7", 2)
    assert "rank 1 of 2" in log_of(box, "again")
    # --priority orders this machine's queue only: refused in one line for Slurm.
    proc = box.cli("start", "--like", "first", "--name", "urgent", "--priority", "5")
    assert proc.returncode == 2 and "--qos" in proc.stderr


PARAM = """
import os
print("lr is", os.environ["HANDYJOBS_PARAM_LR"], flush=True)
"""


def test_sweep_submits_one_slurm_array_with_a_task_per_point(box: Sandbox) -> None:
    box.write("lr.py", PARAM)
    out = box.cli("sweep", "lr.py", "--grid", "lr=0.1,0.2", "--slurm", check=True).stdout
    assert "sweep lr-sweep: 2 jobs" in out
    arrays = set()
    for index, (name, value) in enumerate((("lr-lr0p1", "0.1"), ("lr-lr0p2", "0.2"))):
        rec = wait_state(box, name, "succeeded", "failed", "lost", timeout=90)
        assert rec["state"] == "succeeded", log_of(box, name)
        array, _, task = rec["runs"][-1]["handle"]["job_id"].partition("_")
        arrays.add(array)
        assert task == str(index)  # point I is task I of the array
        assert f"lr is {value}" in log_of(box, name)
    assert len(arrays) == 1  # one submission for the sweep


def _counting_squeue(box: Sandbox) -> Path:
    """A ``squeue`` first on PATH that notes each call, then runs Slurm's own."""
    real = shutil.which("squeue")
    assert real is not None
    bindir = box.root / "bin"
    bindir.mkdir(exist_ok=True)
    wrapper = bindir / "squeue"
    calls = box.root / "squeue-calls"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    box.env["PATH"] = f"{bindir}:{box.env.get('PATH', os.environ['PATH'])}"
    return calls


def _count(calls: Path) -> int:
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def test_list_asks_squeue_once_for_all_jobs_and_wait_never_polls_it_hard(box: Sandbox) -> None:
    box.write("forever.py", FOREVER)
    for name in ("h1", "h2", "h3"):  # held: Slurm keeps them PENDING without using the node
        box.cli("start", "forever.py", "--slurm", "--slurm-arg=--hold", "--name", name, check=True)
    calls = _counting_squeue(box)
    (box.home / "slurm-squeue.json").unlink(missing_ok=True)  # what the starts asked
    out = box.cli("list", check=True, env={"HANDYJOBS_SLURM_CACHE_S": "30"}).stdout
    assert out.count("JobHeldUser") == 3
    assert _count(calls) == 1  # one squeue for the three jobs
    box.cli("list", check=True, env={"HANDYJOBS_SLURM_CACHE_S": "30"})
    assert _count(calls) == 1  # the next command within the cache time reuses the answer
    # `wait` polls the state, but Slurm at most once per cache period (2 s by default).
    proc = box.cli("wait", "h1", "--timeout", "6", env={"HANDYJOBS_SLURM_CACHE_S": "2"})
    assert proc.returncode == 124
    assert 1 <= _count(calls) - 1 <= 5, calls.read_text()


def test_like_of_a_local_job_with_slurm_drops_this_machines_picks(box: Sandbox) -> None:
    box.write("hello.py", "print('hello from', __file__, flush=True)\n")
    gpus = box.root / "gpus.json"
    gpus.write_text('{"gpus": [{"index": 0, "name": "Fake", "memory_used_mib": 0, '
                    '"memory_total_mib": 1000, "utilization_pct": 0}]}')  # fmt: skip
    env = {"HANDYJOBS_FAKE_GPUS": str(gpus)}
    box.cli(
        "start", "hello.py", "--gpus", "0", "--priority", "2", "--name", "here",
        check=True, env=env,
    )  # fmt: skip
    assert wait_state(box, "here", "succeeded", "failed", timeout=60)["state"] == "succeeded"
    # Its one GPU becomes --gpus-per-node 1 (the local cluster counts two GPUs per node).
    box.cli("start", "--like", "here", "--slurm", "--name", "there", check=True, env=env)
    rec = wait_state(box, "there", "succeeded", "failed", "lost", timeout=90)
    assert rec["state"] == "succeeded", log_of(box, "there")
    assert rec["spec"]["slurm"]["gpus_per_node"] == 1
    assert rec["spec"]["gpus"] is None and rec["spec"]["priority"] == 0
    assert rec["runs"][-1]["handle"]["job_id"]
    assert "hello from" in log_of(box, "there")


def _runner_waits_on_the_lock(home: Path) -> bool:
    """True once the job's runner is blocked on the state folder's lock (see /proc/locks)."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "->":  # a waiter: "N: -> FLOCK ADVISORY READ PID"
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{fields[5]}/cmdline").read_bytes().split(b"\0")
                if b"handyjobs.jobside.runner" in argv and str(home).encode() in argv:
                    return True
    return False


def test_scancel_while_the_runner_starts_up_is_stopped_not_lost(box: Sandbox) -> None:
    box.write("forever.py", FOREVER)
    out = box.cli(
        "start", "forever.py", "--slurm", "--slurm-arg=--hold", "--name", "early", check=True
    ).stdout
    job_id = out.split(" as job ")[1].split(":")[0]
    slurm_env = {**os.environ, **box.env}
    # Hold the registry's lock so that the runner, once Slurm starts it, waits in its first
    # steps, with its signal handlers set but before it is ready to run the job.
    fd = os.open(box.home, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        subprocess.run(["scontrol", "release", job_id], env=slurm_env, check=True)
        wait_until(lambda: _runner_waits_on_the_lock(box.home), 60, 0.2, "the runner to start")
        subprocess.run(["scancel", job_id], env=slurm_env, check=True)
        time.sleep(1.0)  # Slurm's SIGTERM reaches the waiting runner (SIGKILL is 10 s later)
    finally:
        os.close(fd)
    rec = wait_state(box, "early", "stopped", "lost", "failed", timeout=60)
    assert rec["state"] == "stopped", rec["reason"]
    assert "Slurm ended the job before it started" in log_of(box, "early")
    assert str(box.root / "forever.py") not in subprocess.run(
        ["ps", "-eo", "args"], capture_output=True, text=True
    ).stdout
