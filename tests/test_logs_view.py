"""``logs`` as the terminal showed it: real jobs, their real logs, read by the real CLI."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import struct
import sys
import termios
from pathlib import Path

from conftest import Sandbox, show, wait_state, wait_until

# A bar redrawn 200 times on one line, in colour, then a plain line; then the same again.
BAR = r"""
import sys
for epoch in (1, 2):
    for i in range(200):
        sys.stdout.write(f"\r\x1b[2K\x1b[32mepoch {epoch}\x1b[0m {i + 1}/200")
    sys.stdout.write("\n")
    print(f"epoch {epoch} done")
"""


def test_n_counts_shown_lines_and_redraws_collapse(sandbox: Sandbox) -> None:
    sandbox.write("bar.py", BAR)
    sandbox.cli("start", "bar.py", "--name", "bar", check=True)
    wait_state(sandbox, "bar", "succeeded")
    raw = Path(show(sandbox, "bar")["log_path"]).read_bytes()
    assert raw.count(b"\r") >= 400  # the log keeps every redraw
    tail = sandbox.cli("logs", "bar", "-n", "3", check=True).stdout
    # piped: plain, each redraw collapsed to what the screen showed last
    assert tail.splitlines() == ["epoch 2 200/200", "epoch 2 done", tail.splitlines()[2]]
    assert tail.splitlines()[2].startswith("[handyjobs] run 1 of bar ended")
    assert len(tail) < 200
    whole = sandbox.cli("logs", "bar", check=True).stdout
    assert "\x1b" not in whole and "\r" not in whole
    assert whole.count("epoch 1 200/200\n") == 1 and "epoch 1 199/200" not in whole
    assert sandbox.cli("logs", "bar", "--raw", check=True).stdout == raw.decode().replace(
        "\r", "\n"
    )  # text mode reads "\r" as a line end; the bytes are the file's
    bad = sandbox.cli("logs", "bar", "--raw", "--plain")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def _pty_cli(sandbox: Sandbox, *args: str, env: dict[str, str] | None = None) -> tuple[int, int]:
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(
            sys.executable,
            [sys.executable, "-m", "handyjobs", *args],
            {**sandbox.env, "TERM": "xterm", **(env or {})},
        )
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    return pid, fd


def _read_all(pid: int, fd: int) -> bytes:
    seen = b""
    try:
        while True:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    break
                if not data:
                    break
                seen += data
            elif os.waitpid(pid, os.WNOHANG)[0] == pid:
                break
    finally:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        os.close(fd)
    return seen


def test_on_a_terminal_colours_stay_unless_no_color(sandbox: Sandbox) -> None:
    sandbox.write("bar.py", BAR)
    sandbox.cli("start", "bar.py", "--name", "bar", check=True)
    wait_state(sandbox, "bar", "succeeded")
    env = {k: v for k, v in sandbox.env.items() if k != "NO_COLOR"}
    pid, fd = _pty_cli(Sandbox(sandbox.root, env), "logs", "bar", "-n", "3")
    screen = _read_all(pid, fd)
    assert b"\x1b[32mepoch 2\x1b[0m 200/200" in screen and b"199/200" not in screen
    pid, fd = _pty_cli(sandbox, "logs", "bar", "-n", "3")  # the sandbox sets NO_COLOR
    assert b"\x1b[32m" not in _read_all(pid, fd)


def test_follow_on_a_terminal_redraws_the_line_being_written(sandbox: Sandbox) -> None:
    flag = sandbox.root / "go"
    sandbox.write(
        "slow.py",
        "import os, sys, time\n"
        "for i in range(3):\n"
        "    sys.stdout.write(f'\\rstep {i}'); sys.stdout.flush()\n"
        "    while not os.path.exists(sys.argv[1] + str(i)): time.sleep(0.02)\n"
        "print()\nprint('finished')\n",
    )
    sandbox.cli("start", "slow.py", "--name", "slow", "--", str(flag), check=True)
    pid, fd = _pty_cli(sandbox, "logs", "slow", "-f")
    seen = b""

    def has(needle: bytes) -> bool:
        nonlocal seen
        if select.select([fd], [], [], 0.1)[0]:
            with contextlib.suppress(OSError):
                seen += os.read(fd, 65536)
        return needle in seen

    for i in range(3):
        # the unfinished line shows as it stands, in place (no newline yet)
        wait_until(lambda i=i: has(b"\rstep %d\x1b[K" % i), 20, what=f"step {i}")  # type: ignore[misc]
        Path(f"{flag}{i}").touch()
    seen += _read_all(pid, fd)
    assert b"\rstep 2\x1b[K\nfinished\n" in seen.replace(b"\r\n", b"\n")
