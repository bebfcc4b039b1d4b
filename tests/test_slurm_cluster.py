"""On a real local Slurm: what a real cluster asks of handyjobs (a controller that does not
answer, a group stopped at once, CPUs per GPU task, setup lines)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Sandbox, log_of, show, wait_state, wait_until
from test_slurm import FOREVER, box, slurm_conf  # noqa: F401  (fixtures shared with the Slurm tests)

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "scripts" / "slurm-local.sh"

@pytest.fixture
def silent_controller(box: Sandbox) -> Iterator[None]:  # noqa: F811
    """Stops the local controller for the test; starts it again afterwards, whatever happened."""
    subprocess.run(["bash", str(LOCAL), "ctld-stop"], check=True, timeout=60)
    try:
        yield
    finally:
        subprocess.run(["bash", str(LOCAL), "ctld-start"], check=True, timeout=120)


def test_list_says_the_cluster_is_silent_in_bounded_time(
    box: Sandbox,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    box.write("forever.py", FOREVER)
    for name in ("a", "b"):
        box.cli("start", "forever.py", "--slurm", "--cpu", "--name", name, check=True)
    for name in ("a", "b"):
        wait_state(box, name, "running", timeout=90)
    assert "did not answer" not in box.cli("list", check=True).stderr
    request.getfixturevalue("silent_controller")
    # A squeue left to itself waits 9 s for a silent controller, per job asked. Asked afresh:
    # the controller stops within the 2 s that the answer of the `list` above stays good, and
    # a `list` then rightly shows that answer, with no word of silence (once in a full run).
    began = time.monotonic()
    listed = box.cli("list", check=True, env={"HANDYJOBS_SLURM_CACHE_S": "0"})
    took = time.monotonic() - began
    assert took < 8.0, took
    lines = [x for x in listed.stderr.splitlines() if "has not answered since" in x]
    assert len(lines) == 1 and "Slurm cluster handyjobs-local" in lines[0], listed.stderr
    assert listed.stdout.count("running") == 2  # the last known states
    shown = box.cli("show", "a")
    assert shown.returncode == 0 and "has not answered since" in shown.stderr
    subprocess.run(["bash", str(LOCAL), "ctld-start"], check=True, timeout=120)
    wait_until(
        lambda: "not answered" not in box.cli("list", check=True).stderr,
        30,
        0.5,
        "the line to go once the controller answers",
    )
    assert show(box, "a")["state"] == "running"


def _shims(sb: Sandbox, calls: Path, stamped: bool = False) -> str:
    """A folder of Slurm commands that log each call to ``calls`` and run the real one: a
    counter in front of the real Slurm, which still does the work. ``stamped``: each line
    also says when the call began (``T cmd args``)."""
    folder = sb.root / "shims"
    folder.mkdir()
    for cmd in ("sbatch", "squeue", "scancel", "scontrol", "sacct"):
        real = shutil.which(cmd)
        if real is None:
            continue
        shim = folder / cmd
        if stamped:  # a call cut short by its timeout leaves its first line only
            body = f'echo "$(date +%s.%N) {cmd} $*" >> "{calls}"\nexec "{real}" "$@"\n'
        else:
            body = f'echo "{cmd} $*" >> "{calls}"\nexec "{real}" "$@"\n'
        shim.write_text(f"#!/bin/sh\n{body}")
        shim.chmod(0o755)
    return f"{folder}:{sb.env.get('PATH', '')}"


def test_stop_group_cancels_every_job_in_one_scancel(box: Sandbox) -> None:  # noqa: F811
    box.write("forever.py", FOREVER)
    names = [f"g{i}" for i in range(10)]
    for name in names:
        box.cli("start", "forever.py", "--slurm", "--cpu", "--name", name, "--group", "grp",
                check=True)  # fmt: skip
    # Four run (two nodes of 2 CPUs), the others wait in Slurm's queue: both kinds are stopped.
    wait_until(
        lambda: sum(show(box, n)["state"] == "running" for n in names[:5]) >= 2,
        90,
        0.5,
        "two of the group to run",
    )
    calls = box.root / "calls.log"
    began = time.monotonic()
    out = box.cli("stop", "--group", "grp", env={"PATH": _shims(box, calls)}, check=True)
    took = time.monotonic() - began
    made = calls.read_text().splitlines()
    scancels = [c for c in made if c.startswith("scancel")]
    print(f"stop --group of 10: {len(made)} Slurm calls in {took:.1f}s")
    assert len(scancels) == 1, made
    assert all(box_job in scancels[0] for box_job in _job_ids(box, names)), scancels
    assert out.stdout.count("stopped") == 10, out.stdout
    for name in names:
        assert show(box, name)["state"] == "stopped"


def _job_ids(sb: Sandbox, names: list[str]) -> list[str]:
    return [show(sb, n)["runs"][-1]["handle"]["job_id"] for n in names]


CPUS = """
import json
import os
print("cpus per task", os.environ.get("SLURM_CPUS_PER_TASK"), "rank", os.environ.get("RANK"))
"""


@pytest.mark.parametrize(
    ("options", "cpus"),
    [
        # The local node has 2 CPUs and 2 GPUs (Slurm counts them): a share of 1 per GPU.
        (("--gpus-per-node", "2"), "2"),
        (("--gpus-per-node", "1", "--cpus-per-gpu", "2"), "2"),
        (("--gpus-per-node", "1"), "1"),
    ],
)
def test_a_gpu_job_gets_cpus_per_gpu(
    box: Sandbox,  # noqa: F811
    options: tuple[str, ...],
    cpus: str,
) -> None:
    box.write("cpus.py", CPUS)
    box.cli("start", "cpus.py", "--slurm", *options, "--name", "c", check=True)
    rec = wait_state(box, "c", "succeeded", "failed", "lost", timeout=90)
    log = log_of(box, "c")
    assert rec["state"] == "succeeded", log
    assert f"cpus per task {cpus} " in log, log


SETUP = """
import json
import os
print("FOO is", os.environ.get("FOO"))
print("PATH is", os.environ.get("PATH"))
"""


def test_setup_lines_change_the_jobs_environment(box: Sandbox) -> None:  # noqa: F811
    box.write("setup.py", SETUP)
    box.cli(
        "start", "setup.py", "--slurm", "--cpu", "--name", "s",
        "--setup", "export FOO=bar", "--setup", 'export PATH="/opt/mod/bin:$PATH"',
        check=True,
    )  # fmt: skip
    rec = wait_state(box, "s", "succeeded", "failed", "lost", timeout=90)
    log = log_of(box, "s")
    assert rec["state"] == "succeeded", log
    assert "FOO is bar" in log, log
    # The module's folder in front, and the job's own PATH (the caller's) behind it.
    path = next(line for line in log.splitlines() if line.startswith("PATH is ")).split()[-1]
    assert path.startswith("/opt/mod/bin:") and path.endswith(box.env["PATH"]), path
    assert "--setup='export FOO=bar'" in box.cli("show", "s", check=True).stdout


@pytest.fixture
def hung_controller(box: Sandbox) -> Iterator[Callable[[], None]]:  # noqa: F811
    """The local controller stopped with SIGSTOP: it takes connections and answers none, as a
    swamped or wedged one does. Yields the call that lets it go on (made again at the end)."""
    pid = int((Path(box.env["SLURM_CONF"]).parent / "slurmctld.pid").read_text())
    os.kill(pid, signal.SIGSTOP)

    def go_on() -> None:
        os.kill(pid, signal.SIGCONT)

    try:
        yield go_on
    finally:
        go_on()


def test_a_stop_the_controller_never_answers_fails_in_bounded_time_and_changes_nothing(
    box: Sandbox,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    box.write("forever.py", FOREVER)
    names = ["h0", "h1", "h2"]
    for name in names:
        box.cli("start", "forever.py", "--slurm", "--cpu", "--name", name, "--group", "hung",
                check=True)  # fmt: skip
    # One more, held in Slurm's queue: a stop not taken must leave no mark on it either, or
    # it would stop itself once Slurm starts it (its runner honours a stop asked of it).
    box.cli("start", "forever.py", "--slurm", "--cpu", "--name", "later", "--group", "hung",
            "--hold", check=True)  # fmt: skip

    def begun() -> bool:  # each runner has recorded its start (not only Slurm's RUNNING)
        return all(show(box, n)["runs"][-1]["started_at"] for n in names)

    wait_until(begun, 90, 0.5, "the three jobs' runners to start")
    go_on = request.getfixturevalue("hung_controller")
    # scancel left to itself waits 10 s for each cancel it sends (and squeue 9 s): a group of
    # 3 took 52 s. Now: one bounded scancel for the group, then each job's stop says it was
    # not taken.
    calls = box.root / "calls.log"
    began = time.monotonic()
    proc = box.cli("stop", "--group", "hung", env={"PATH": _shims(box, calls, stamped=True)})
    took = time.monotonic() - began
    made = calls.read_text() if calls.exists() else ""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    failed = [x for x in proc.stderr.splitlines() if "scancel" in x and "failed" in x]
    assert len(failed) == 4 and all("once Slurm answers" in x for x in failed), (
        proc.stderr,
        made,
    )
    assert [line.split()[1] for line in made.splitlines()].count("scancel") == 1, made
    assert took < 20.0, (took, made, proc.stderr)
    # The stop that was not taken marked nothing: the jobs read as Slurm last said.
    runs = {r["name"]: r for r in json.loads(box.cli("list", "--json", check=True).stdout)}
    assert [runs[n]["state"] for n in names] == ["running"] * 3, runs
    assert runs["later"]["state"] == "queued"
    assert not show(box, "later")["runs"][-1]["stop_requested"]
    go_on()
    # A wedged controller may still take the cancel it had queued once it goes on: each job
    # then reads stopped (cancelled late), else it runs on; never failed or lost. A stop
    # now ends those that run.
    every = [*names, "later"]

    def settled() -> list[str] | None:
        states = [show(box, n)["state"] for n in every]
        return states if all(s in ("running", "queued", "stopped") for s in states) else None

    wait_until(settled, 30, 0.5, "each job running, queued or stopped")
    time.sleep(2)  # a late cancel's end, if one comes
    going = [n for n in every if show(box, n)["state"] != "stopped"]
    if going:
        box.cli("stop", *going, check=True)
    assert all(show(box, n)["state"] == "stopped" for n in every)
