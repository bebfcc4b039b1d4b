"""A run is a cgroup: what the job starts is the run's whatever its environment or title, and
what handyjobs starts for a nested job is never the outer job's.

These run on the machine's real cgroups (v2 and/or v1 as root); a machine without a writable
cgroup falls back to the marker, which these tests show is not enough, so they say why they
skip there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import Sandbox, show, wait_state, wait_until

from handyjobs.core import cgroups

pytestmark = pytest.mark.skipif(
    not any(
        os.access(h.mount, os.W_OK) or os.access(h.base, os.W_OK) for h in cgroups.hierarchies()
    ),
    reason="no writable cgroup on this machine (cgroup v2 delegated, or v1 as root, needed)",
)

# A job that starts a child with a scrubbed environment (so without HANDYJOBS_RUN_ID), writes
# the child's pid where the test can read it, and waits.
SCRUBBED = """
import os, subprocess, sys, time
child = subprocess.Popen(["sleep", "300"], env={"PATH": os.environ["PATH"]})
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(300)
"""

# A job that rewrites its title (setproctitle overwrites the environ area) and ignores SIGHUP.
TITLED = """
import os, signal, sys, time
import setproctitle
signal.signal(signal.SIGHUP, signal.SIG_IGN)
setproctitle.setproctitle("trainer: epoch 1 " + "x" * 4000)
open(sys.argv[1], "w").write(str(os.getpid()))
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def _pid_from(path: Path) -> int:
    wait_until(lambda: path.exists() and path.read_text().strip(), 60, what=f"{path.name}")
    return int(path.read_text())


def test_a_child_with_a_scrubbed_environment_is_stopped_with_the_job(sandbox: Sandbox) -> None:
    script = sandbox.write("scrub.py", SCRUBBED)
    pidfile = sandbox.root / "child.pid"
    sandbox.cli("start", str(script), "--name", "scrub", "--cpu", "--", str(pidfile), check=True)
    child = _pid_from(pidfile)
    assert b"HANDYJOBS_RUN_ID" not in Path(f"/proc/{child}/environ").read_bytes()
    run_id = show(sandbox, "scrub")["runs"][-1]["run_id"]
    assert cgroups.existing(run_id).contains(child)
    sandbox.cli("stop", "scrub", check=True)
    assert wait_state(sandbox, "scrub", "stopped")["state"] == "stopped"
    wait_until(lambda: not _alive(child), 10, what="the scrubbed child to end")
    # The end of the run leaves no cgroup behind.
    wait_until(lambda: not cgroups.existing(run_id).dirs, 10, what="the run's cgroup to go")


def test_a_job_that_rewrites_its_title_and_ignores_sighup_is_stopped(sandbox: Sandbox) -> None:
    script = sandbox.write("titled.py", TITLED)
    pidfile = sandbox.root / "titled.pid"
    sandbox.cli("start", str(script), "--name", "th", "--cpu", "--", str(pidfile), check=True)
    pid = _pid_from(pidfile)
    wait_until(
        lambda: b"trainer: epoch 1" in Path(f"/proc/{pid}/cmdline").read_bytes(), 30, what="title"
    )
    out = sandbox.cli("stop", "th", check=True).stdout
    assert "(0 processes ended)" not in out
    wait_state(sandbox, "th", "stopped")
    wait_until(lambda: not _alive(pid), 10, what="the titled job to end")


def test_a_nested_handyjobs_outlives_the_outer_job(sandbox: Sandbox) -> None:
    inner_home = sandbox.root / "inner-state"
    inner_sock = sandbox.env["HANDYJOBS_TMUX_SOCKET"] + "-inner"
    inner = sandbox.write("inner.py", "import time\ntime.sleep(300)\n")
    outer = sandbox.write(
        "outer.py",
        "import os, subprocess, sys, time\n"
        "env = dict(os.environ, HANDYJOBS_HOME=sys.argv[1], HANDYJOBS_TMUX_SOCKET=sys.argv[2])\n"
        "subprocess.run([sys.executable, '-m', 'handyjobs', 'start', sys.argv[3], "
        "'--name', 'inner', '--cpu'], env=env, check=True)\n"
        "open(sys.argv[4], 'w').write('started')\n"
        "time.sleep(300)\n",
    )
    flag = sandbox.root / "inner.started"
    sandbox.cli(
        "start", str(outer), "--name", "outer", "--cpu", "--",
        str(inner_home), inner_sock, str(inner), str(flag), check=True,
    )  # fmt: skip
    wait_until(flag.exists, 60, what="the inner job to start")
    inner_env = {"HANDYJOBS_HOME": str(inner_home), "HANDYJOBS_TMUX_SOCKET": inner_sock}

    def inner_state() -> str:
        out = sandbox.cli("show", "inner", "--json", env=inner_env, check=True).stdout
        return str(json.loads(out)["state"])

    try:
        wait_until(lambda: inner_state() == "running", 60, what="the inner job to run")
        sandbox.cli("stop", "outer", check=True)
        wait_state(sandbox, "outer", "stopped")
        # The inner tmux server and runner were never the outer job's: the inner job runs on.
        assert inner_state() == "running"
    finally:
        sandbox.cli("stop", "inner", env=inner_env)
        os.system(f"tmux -L {inner_sock} kill-server 2>/dev/null")
    assert inner_state() == "stopped"


def test_show_says_how_the_runs_processes_are_found(sandbox: Sandbox) -> None:
    script = sandbox.write("quick.py", "print('ok')\n")
    sandbox.cli("start", str(script), "--name", "q", "--cpu", check=True)
    record = wait_state(sandbox, "q", "succeeded")
    assert record["runs"][-1]["containment"].startswith("cgroup v")
    line = next(
        ln for ln in sandbox.cli("show", "q", check=True).stdout.splitlines() if "containment" in ln
    )
    assert "cgroup v" in line and "whatever its environment" in line
