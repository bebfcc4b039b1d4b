"""End to end: pause and resume, kill --signal, and the local limits --time and --mem, with the
real CLI, real tmux on a throwaway socket and real processes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import Sandbox, log_of, show, wait_state, wait_until

from handyjobs import procfs
from handyjobs.core import cgroups

T = TypeVar("T")

#: A job of two processes (itself and a child) that count, each into its own file.
COUNTER = """
import os, subprocess, sys, time
COUNT = '''
import os, sys, time
n = 0
while True:
    n += 1
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(0.02)
'''
child = subprocess.Popen([sys.executable, "-c", COUNT, "child-count"])
with open("pids.tmp", "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
os.replace("pids.tmp", "pids")
exec(COUNT.replace("sys.argv[1]", "'main-count'"))
"""

#: A job that writes which signals reached it: its main process, and a child of its own.
LISTENER = """
import os, signal, subprocess, sys, time
LISTEN = '''
import os, signal, sys, time
who = sys.argv[1]
def got(signum, frame):
    with open(f"{who}-got", "a") as f:
        f.write(signal.Signals(signum).name + " " + str(time.time()) + "\\\\n")
    if signum == signal.SIGTERM:
        sys.exit(0)
for sig in (signal.SIGUSR1, signal.SIGTERM):
    signal.signal(sig, got)
with open(f"{who}-ready", "w") as f:
    f.write(str(time.time()))
while True:
    time.sleep(0.05)
'''
if "--child" in sys.argv:
    subprocess.Popen([sys.executable, "-c", LISTEN, "child"])
exec(LISTEN.replace("sys.argv[1]", "'main'"))
"""


def count(root: Path, who: str) -> int:
    """What one of the counter's processes wrote last (0 before its first write)."""
    path = root / f"{who}-count"
    return int(path.read_text()) if path.exists() else 0


def stays(read: Callable[[], T], for_s: float) -> T:
    """Read a value again and again for ``for_s`` seconds; fail if it ever changes."""
    first = read()
    deadline = time.monotonic() + for_s
    while time.monotonic() < deadline:
        assert read() == first, "it changed while it should not"
        time.sleep(0.05)
    return first


def states(pids: list[int]) -> list[bytes | None]:
    """The state letter of each process (``T`` when stopped)."""
    return [procfs.state(pid) for pid in pids]


def test_pause_stops_every_process_and_resume_runs_them_again(sandbox: Sandbox) -> None:
    root = sandbox.root
    sandbox.write("counter.py", COUNTER)
    sandbox.cli("start", "counter.py", "--name", "c", "--cpu", check=True)
    wait_until(lambda: count(root, "main") > 2 and count(root, "child") > 2, what="counting")
    pids = [int(p) for p in (root / "pids").read_text().split()]

    out = sandbox.cli("pause", "c", check=True).stdout
    assert out.startswith("paused c (2 processes stopped): its processes are stopped")
    assert states(pids) == [b"T", b"T"]
    assert show(sandbox, "c")["state"] == "paused"
    assert " paused " in sandbox.cli("list", check=True).stdout
    stopped_at = stays(lambda: (count(root, "main"), count(root, "child")), 1.0)
    # Pausing twice, or resuming what runs, is refused in one line; nothing changes.
    again = sandbox.cli("pause", "c")
    assert (again.returncode, again.stderr.count("\n")) == (1, 1)
    assert "job c is paused; nothing to pause" in again.stderr

    out = sandbox.cli("resume", "c", check=True).stdout
    assert out.strip() == "resumed c (2 processes continued)"
    assert b"T" not in states(pids)
    main, child = stopped_at
    wait_until(lambda: count(root, "main") > main and count(root, "child") > child, what="counts")
    assert show(sandbox, "c")["state"] == "running"
    not_paused = sandbox.cli("resume", "c")
    assert not_paused.returncode == 1 and "is not paused (it runs)" in not_paused.stderr
    sandbox.cli("stop", "c", "--timeout", "2", check=True)
    assert wait_state(sandbox, "c", "stopped")["state"] == "stopped"


def test_pause_of_a_job_that_is_not_running_is_refused_in_one_line(sandbox: Sandbox) -> None:
    sandbox.write("listener.py", LISTENER)
    sandbox.cli("start", "listener.py", "--name", "a", "--cpu", check=True)
    sandbox.cli("start", "listener.py", "--name", "q", "--cpu", "--after", "a", check=True)
    assert wait_state(sandbox, "q", "queued")["state"] == "queued"
    queued = sandbox.cli("pause", "q")
    assert queued.returncode == 1 and queued.stdout == ""
    assert queued.stderr.count("\n") == 1 and "job q is queued, not running" in queued.stderr
    missing = sandbox.cli("pause", "nope")
    assert missing.returncode == 1 and "no job named nope" in missing.stderr
    usage = sandbox.cli("pause")
    assert usage.returncode == 2 and usage.stderr.count("\n") == 1
    killed = sandbox.cli("kill", "q", "--signal", "USR1")
    assert killed.returncode == 1 and "job q is queued, not running" in killed.stderr
    assert show(sandbox, "q")["state"] == "queued"
    sandbox.cli("stop", "q", "a", "--timeout", "2")


def test_a_paused_group_starts_nothing_new_until_it_is_resumed(sandbox: Sandbox) -> None:
    sandbox.write("listener.py", LISTENER)
    sandbox.cli("start", "listener.py", "--name", "g1", "--group", "g", "--cpu", check=True)
    wait_until(lambda: (sandbox.root / "main-ready").exists(), what="g1 to listen")
    out = sandbox.cli("pause", "--group", "g", check=True).stdout
    assert out.startswith("paused g1 (1 process stopped)")
    started = sandbox.cli("start", "listener.py", "--name", "g2", "--group", "g", "--cpu")
    assert started.returncode == 0, started.stderr
    assert "group g is paused" in started.stdout
    rec = show(sandbox, "g2")
    assert rec["state"] == "queued" and rec["wait"]["paused"] is True
    # Another group and a job of none go on.
    other = sandbox.cli("start", "listener.py", "--name", "h1", "--group", "h", "--cpu", check=True)
    assert "started h1" in other.stdout

    sandbox.cli("resume", "--group", "g", check=True)
    wait_state(sandbox, "g2", "running")
    sandbox.cli("stop", "--all", "--timeout", "2", check=True)


def test_stop_of_a_paused_job_continues_it_to_act_on_sigterm_and_ends_it_stopped(
    sandbox: Sandbox,
) -> None:
    root = sandbox.root
    sandbox.write("listener.py", LISTENER)
    sandbox.cli("start", "listener.py", "--name", "p", "--cpu", check=True)
    wait_until(lambda: (root / "main-ready").exists(), what="the job to listen")
    sandbox.cli("pause", "p", check=True)
    began = time.monotonic()
    out = sandbox.cli("stop", "p", "--timeout", "30", check=True).stdout
    assert out.startswith("stopped job p")
    assert time.monotonic() - began < 20  # it acted on SIGTERM: no wait for SIGKILL
    rec = wait_state(sandbox, "p", "stopped")
    assert rec["exit_code"] == 0 and "SIGTERM" in (root / "main-got").read_text()


def test_kill_sends_any_signal_to_every_process_or_the_main_one(sandbox: Sandbox) -> None:
    root = sandbox.root
    sandbox.write("listener.py", LISTENER)
    sandbox.cli("start", "listener.py", "--name", "k", "--cpu", "--", "--child", check=True)
    wait_until(
        lambda: (root / "main-ready").exists() and (root / "child-ready").exists(),
        what="both processes to listen",
    )
    out = sandbox.cli("kill", "k", "--signal", "USR1", "--main", check=True).stdout
    assert out.startswith("sent SIGUSR1 to the main process of k (pid ")
    wait_until(lambda: (root / "main-got").exists(), what="the main process's handler")
    stays(lambda: (root / "child-got").exists(), 0.5)
    assert not (root / "child-got").exists()

    out = sandbox.cli("kill", "k", "--signal", "SIGUSR1", check=True).stdout
    assert out.strip() == "sent SIGUSR1 to k (2 processes)"
    wait_until(lambda: (root / "child-got").exists(), what="the child's handler")
    assert (root / "main-got").read_text().count("SIGUSR1") == 2
    bad = sandbox.cli("kill", "k", "--signal", "USR3")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "--signal 'USR3' is not a signal" in bad.stderr
    assert show(sandbox, "k")["state"] == "running"  # a signal changes no state
    sandbox.cli("stop", "k", "--timeout", "2", check=True)


def test_time_limit_warns_first_then_ends_the_job_failed(sandbox: Sandbox) -> None:
    root = sandbox.root
    sandbox.write("listener.py", LISTENER)
    sandbox.cli(
        "start", "listener.py", "--name", "t", "--cpu", "--time", "5s", "--signal-before", "3",
        check=True,
    )  # fmt: skip
    rec = wait_state(sandbox, "t", "failed", "succeeded", "stopped", timeout=40)
    assert rec["state"] == "failed"
    assert rec["reason"]["kind"] == "time_limit"
    got = (root / "main-got").read_text().split("\n")
    warned, ended = (line.split() for line in got[:2])
    assert warned[0] == "SIGUSR1" and ended[0] == "SIGTERM"  # the warning first
    ready = float((root / "main-ready").read_text())
    # The warning about 5 - 3 s after the start (the job was ready a little after it began),
    # the end at the limit, about 3 s after the warning.
    assert 0.5 < float(warned[1]) - ready < 10
    assert float(ended[1]) - float(warned[1]) > 2
    listed = sandbox.cli("list", check=True).stdout
    assert "TIMEOUT" in next(line for line in listed.splitlines() if line.startswith("t "))
    shown = sandbox.cli("show", "t", check=True).stdout
    assert "time limit" in shown
    log = log_of(sandbox, "t")
    assert "time-limit warning (SIGUSR1) sent" in log and "time limit of 5 s reached" in log


@pytest.mark.skipif(not cgroups.can_limit_memory(), reason="no writable memory cgroup here")
def test_mem_limit_kills_a_job_that_allocates_past_it(sandbox: Sandbox) -> None:
    sandbox.write("hog.py", "data = b'x' * (500 << 20)\nprint('allocated', len(data))\n")
    sandbox.cli("start", "hog.py", "--name", "m", "--cpu", "--mem", "100M", check=True)
    rec = wait_state(sandbox, "m", "failed", "succeeded", timeout=60)
    assert rec["state"] == "failed" and rec["reason"]["kind"] == "out_of_memory"
    assert "allocated" not in log_of(sandbox, "m")
    listed = sandbox.cli("list", check=True).stdout
    assert "OOM" in next(line for line in listed.splitlines() if line.startswith("m "))
    assert "out of memory: it went over its --mem of 100 MiB" in sandbox.cli("show", "m").stdout


def test_mem_where_no_cgroup_can_be_written_is_refused_before_anything_starts(
    sandbox: Sandbox,
) -> None:
    sandbox.write("hog.py", "print('ran')\n")
    env = {cgroups.USE_ENV: "0"}
    refused = sandbox.cli("start", "hog.py", "--name", "m0", "--mem", "100M", env=env)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1
    assert "--mem needs a cgroup with the memory controller" in refused.stderr
    listed = json.loads(sandbox.cli("list", "--all", "--json", check=True).stdout)
    assert listed == []
    assert sandbox.tmux("list-sessions").returncode != 0  # no session was ever made
