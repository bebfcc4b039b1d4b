"""Nothing waits on a pane: Ctrl-S (XOFF) in a job's pane holds neither its runner nor its job."""

from __future__ import annotations

import re

from conftest import SLEEPER, Sandbox, wait_log, wait_state, wait_until

from handyjobs.core.records import parse_time


def test_ctrl_s_in_a_queued_jobs_pane_does_not_stop_it_starting(sandbox: Sandbox) -> None:
    sandbox.write("sleep.py", SLEEPER)
    release = sandbox.root / "release"
    sandbox.cli("start", "sleep.py", "--cpu", "--name", "a", "--", str(release), check=True)
    sandbox.write("chatty.py", "for i in range(20000):\n    print('line', i, 'x' * 60)\n")
    sandbox.cli("start", "chatty.py", "--cpu", "--name", "b", "--after", "a", check=True)
    wait_state(sandbox, "b", "queued")
    session = sandbox.tmux("list-sessions", "-F", "#{session_name}").stdout.split()
    assert "b" in session
    # A person attached to b's pane presses Ctrl-S (XOFF) while it waits.
    sandbox.tmux("send-keys", "-t", "=b:", "C-s")
    wait_until(
        lambda: "queued" in sandbox.tmux("capture-pane", "-p", "-t", "=b:").stdout,
        20,
        what="b's pane to say it is queued",
    )
    release.touch()  # a ends, so b is granted and must start, and end, on its own
    wait_state(sandbox, "a", "succeeded")
    # Its output (1.4 MB) goes to the log whatever the pane can take.
    wait_state(sandbox, "b", "succeeded", timeout=60)
    assert "line 19999" in sandbox.cli("logs", "b", "-n", "3", check=True).stdout


# Waits for a flag file, then prints 1.4 MB and the moment it is done, and exits.
FROZEN = """
import os, sys, time
print("ready", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
for i in range(20000):
    print("line", i, "x" * 60)
print("bye", time.time(), flush=True)
"""


def test_ctrl_s_in_a_running_jobs_pane_neither_holds_its_outcome_nor_costs_a_line(
    sandbox: Sandbox,
) -> None:
    """A person presses Ctrl-S (XOFF) in a running job's pane: the job still prints, ends and
    is recorded when its script exits (with the duration it really ran), and its log has every
    line, with no Ctrl-Q ever pressed."""
    sandbox.write("frozen.py", FROZEN)
    flag = sandbox.root / "go"
    sandbox.cli("start", "frozen.py", "--cpu", "--name", "f", "--", str(flag), check=True)
    wait_log(sandbox, "f", "ready")
    sandbox.tmux("send-keys", "-t", "=f:", "C-s")
    flag.touch()
    record = wait_state(sandbox, "f", "succeeded", "failed", timeout=90)
    assert record["state"] == "succeeded", record
    log = sandbox.cli("logs", "f", "--raw", check=True).stdout
    # Every line, once and in order (the pane's terminal echoes the key as "^S" somewhere).
    assert [int(n) for n in re.findall(r"line (\d+) x{60}\n", log)] == list(range(20000))
    bye = float(log.split("bye ")[1].split()[0])
    ended = parse_time(record["ended_at"]).timestamp()
    # Recorded when the script exited, not at some later Ctrl-Q (generous for a loaded machine).
    assert bye - 1 <= ended <= bye + 30, (bye, record["ended_at"])
    started = parse_time(record["started_at"]).timestamp()
    assert started < bye, record  # the duration, ended - started, is the script's own
