"""Looking at jobs end to end: curves from real runs of the example, top on a real terminal."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import signal
import struct
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO, SLEEPER, Sandbox, log_of, show, wait_log, wait_state, wait_until

from handyjobs.views import curves, png
from handyjobs.views.plot import tick


@pytest.mark.timeout(300)
def test_plot_draws_two_jobs_curves_from_real_runs_of_the_example(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    example = str(REPO / "examples" / "train.py")
    for name, lr in (("lr-hi", "3e-3"), ("lr-lo", "3e-4")):
        sandbox.cli(
            "start", example, "--cpu", "--name", name, "--", "--epochs", "2", "--lr", lr, check=True
        )
    for name in ("lr-hi", "lr-lo"):
        rec = wait_state(sandbox, name, "succeeded", "failed", timeout=180)
        assert rec["state"] == "succeeded", log_of(sandbox, name)
    out = sandbox.cli(
        "plot", "lr-hi", "lr-lo", "--metric", "loss", "--width", "70", "--height", "10", check=True
    ).stdout.splitlines()
    assert out[0] == "loss"
    plot_rows = out[1:11]
    assert all("┤" in row or "│" in row for row in plot_rows)
    assert sum(ch != " " and 0x2800 <= ord(ch) <= 0x28FF for row in plot_rows for ch in row) > 40
    assert out[11].strip().startswith("└")
    # the x axis spans the steps the example logged (read back by the reader under test in
    # test_curves.py): from the first to the last of either job
    logged = [
        curves.read(Path(show(sandbox, n)["log_path"]).parent / "metrics.jsonl")
        for n in ("lr-hi", "lr-lo")
    ]
    steps = [x for found in logged for x, _ in found["loss"]]
    assert out[12].split()[0] == tick(min(steps)) and out[12].split()[-1] == tick(max(steps))
    legend = [line for line in out if line.startswith("━")]
    assert [line.split()[1] for line in legend] == ["lr-hi", "lr-lo"]
    smoothed = sandbox.cli("plot", "lr-hi", "--smooth", "8", "--log-y", check=True).stdout
    assert smoothed.splitlines()[0] == "loss  (moving average of 8 points, log scale)"
    picture = tmp_path / "loss.png"
    done = sandbox.cli("plot", "lr-hi", "lr-lo", "--png", str(picture), check=True)
    assert "wrote" in done.stdout and png.decode_size(picture.read_bytes()) == (900, 540)
    # show: the last and best of each metric; list: a column for one
    summary = json.loads(sandbox.cli("show", "lr-hi", "--json", check=True).stdout)["metrics"]
    assert {"loss", "val_acc"} <= set(summary) and set(summary) == set(logged[0])
    assert summary["val_acc"]["best_is"] == "max" and summary["loss"]["best_is"] == "min"
    assert summary["loss"]["best"] == min(y for _, y in logged[0]["loss"])
    assert summary["loss"]["last_step"] == logged[0]["loss"][-1][0]
    table = sandbox.cli("list", "--metric", "val_acc", check=True).stdout.splitlines()
    assert table[0].split() == [
        "NAME", "STATE", "GPUS", "NPROC", "STARTED", "DURATION", "EXIT", "VAL_ACC", "COMMAND"
    ]  # fmt: skip
    for row in table[1:]:
        assert 0.5 < float(row.split()[7]) <= 1.0
    missing = sandbox.cli("plot", "lr-hi", "--metric", "nope")
    assert missing.returncode == 1 and "val_acc" in missing.stderr
    assert missing.stderr.count("\n") == 1


def _pty_run(sandbox: Sandbox, *args: str) -> tuple[int, int]:
    """Start the CLI on a new pseudo-terminal of 40 rows and 160 columns."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(
            sys.executable,
            [sys.executable, "-m", "handyjobs", *args],
            {**sandbox.env, "TERM": "xterm-256color"},
        )
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    return pid, fd


class Screen:
    """What a program wrote to a pseudo-terminal, read as it comes."""

    def __init__(self, fd: int) -> None:
        self.fd, self.seen = fd, b""

    def has(self, *needles: bytes) -> Callable[[], bool]:
        def probe() -> bool:
            if select.select([self.fd], [], [], 0.1)[0]:
                try:
                    self.seen += os.read(self.fd, 65536)
                except OSError:
                    return False
            return all(n in self.seen for n in needles)

        return probe

    def clear(self) -> None:
        self.seen = b""


def _exit_code(pid: int, timeout: float = 15) -> int:
    done = wait_until(
        lambda: [r for r in [os.waitpid(pid, os.WNOHANG)] if r[0] == pid], timeout, what="exit"
    )
    return os.waitstatus_to_exitcode(done[0][1])  # type: ignore[index]


def _reap(pid: int, fd: int) -> None:
    """End the program if a failed test left it running; close its terminal."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    os.close(fd)


# What the trainer reports while it loops (the progress file's fields as top reads them).
REPORTS = """
import json, os
with open(os.environ["HANDYJOBS_PROGRESS_FILE"], "w") as f:
    json.dump({"desc": "epoch 1/3", "done": 32, "total": 64, "rate_per_s": 16.0, "eta_s": 2.0}, f)
"""


def test_top_shows_jobs_live_under_a_terminal_and_quits_on_q(sandbox: Sandbox) -> None:
    sandbox.write("sleep.py", REPORTS + SLEEPER)
    sandbox.cli("start", "sleep.py", "--name", "sleepy", check=True)
    sandbox.write("ok.py", "print('all done here')\n")
    sandbox.cli("start", "ok.py", "--name", "quick", check=True)
    wait_state(sandbox, "quick", "succeeded")
    wait_log(sandbox, "sleepy", "pid")
    pid, fd = _pty_run(sandbox, "top", "--interval", "0.5")
    screen = Screen(fd)
    try:
        wait_until(screen.has(b"sleepy", b"running", b"quick", b"succeeded"), 30, what="top")
        wait_until(screen.has(b"all done here", b"pid "), 10, what="last lines")
        wait_until(screen.has(b"MiB"), 10, what="the job's memory")
        # the ETA of the whole run: 160 of 3 x 64 steps left at 16 a second
        progress = b"epoch 1/3 32/64 50%, run 16%"
        wait_until(screen.has(progress, b"10.0s"), 10, what="progress and ETA")
        screen.clear()
        wait_until(screen.has(b"sleepy"), 5, what="a second refresh")  # it redraws by itself
        # f follows the selected job's log (the newest, quick: it has ended), a key comes back
        screen.clear()
        os.write(fd, b"f")
        wait_until(screen.has(b"all done here", b"end of quick's log"), 10, what="the log")
        screen.clear()
        os.write(fd, b"x")
        wait_until(screen.has(b"sleepy", b"running"), 10, what="top again")
        os.write(fd, b"q")
        assert _exit_code(pid) == 0
    finally:
        _reap(pid, fd)
    sandbox.cli("stop", "sleepy", check=True)


def test_top_stops_the_selected_job_and_never_writes_the_registry(sandbox: Sandbox) -> None:
    sandbox.write("sleep.py", SLEEPER)
    sandbox.cli("start", "sleep.py", "--name", "victim", check=True)
    sandbox.cli("start", "sleep.py", "--name", "orphan", check=True)
    wait_log(sandbox, "orphan", lambda log: log.count("pid ") == 1)
    # A runner killed without recording an outcome: `list` would write "lost" into the
    # registry; top shows it lost but leaves the registry as it is.
    orphan = show(sandbox, "orphan")["runs"][-1]["pids"]
    os.kill(orphan["runner"], signal.SIGKILL)
    registry = sandbox.home / "registry.json"
    before = registry.read_bytes()
    pid, fd = _pty_run(sandbox, "top", "--interval", "0.5")
    screen = Screen(fd)
    try:
        wait_until(screen.has(b"victim", b"orphan", b"lost"), 30, what="top")
        time.sleep(1.2)  # a few refreshes
        assert registry.read_bytes() == before
        # the newest job is first: select the second (victim) and stop it
        os.write(fd, b"\x1b[B")
        os.write(fd, b"s")
        wait_until(screen.has(b"stop victim? y/n"), 10, what="the question")
        os.write(fd, b"y")
        wait_until(screen.has(b"stopped victim"), 30, what="the stop")
        os.write(fd, b"q")
        assert _exit_code(pid) == 0
    finally:
        _reap(pid, fd)
    assert show(sandbox, "victim")["state"] == "stopped"
    assert show(sandbox, "orphan")["state"] == "lost"  # `show` folds it, as before


def test_top_without_a_terminal_prints_one_frame(sandbox: Sandbox) -> None:
    sandbox.write("ok.py", "print('[finished] line')\n")
    sandbox.cli("start", "ok.py", "--name", "one", check=True)
    wait_state(sandbox, "one", "succeeded")
    out = sandbox.cli("top", check=True, env={"COLUMNS": "160"}).stdout
    assert "NAME" in out and "one" in out and "succeeded" in out
    assert "[finished] line" in out  # a log line, never read as rich markup
    bad = sandbox.cli("top", "--interval", "0")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
