"""The queue never waits on a pane: Ctrl-S (XOFF) in a queued job's pane cannot hold its runner."""

from __future__ import annotations

from conftest import SLEEPER, Sandbox, wait_state, wait_until


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
