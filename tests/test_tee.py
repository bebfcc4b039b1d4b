"""Tests for handyjobs.jobside.tee: real processes on real pseudo-terminals, logs in tmp_path."""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from handyjobs.jobside.tee import Outcome, run_on_pty

PY = sys.executable

# 1 MiB holding every byte value, "\n", "\r" and control characters included.
CHUNK = bytes(range(256)) * 4096
CHUNKS = 100
FLOOD = (
    "import sys\n"
    f"chunk = bytes(range(256)) * 4096\n"
    f"for _ in range({CHUNKS}):\n"
    "    sys.stdout.buffer.write(chunk)\n"
    "sys.stdout.buffer.flush()\n"
)


def run(
    tmp_path: Path,
    argv: Sequence[str],
    *,
    on_start: Callable[[int], None] | None = None,
    echo_fd: int | None = None,
    input_fd: int | None = None,
    env: dict[str, str] | None = None,
) -> tuple[Outcome, bytes]:
    """Run argv through run_on_pty with a fresh log and return the outcome and the log."""
    log = tmp_path / "job.log"
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    try:
        outcome = run_on_pty(
            argv,
            env if env is not None else dict(os.environ),
            str(tmp_path),
            log_fd,
            on_start=on_start,
            echo_fd=echo_fd,
            input_fd=input_fd,
        )
    finally:
        os.close(log_fd)
    return outcome, log.read_bytes()


def open_fds() -> set[str]:
    """The fds this process holds now."""
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def tty_pair() -> Iterator[tuple[int, int]]:
    """A pty the test drives: (master it writes keystrokes to, slave standing for the pane)."""
    master, slave = os.openpty()
    try:
        yield master, slave
    finally:
        os.close(master)
        os.close(slave)


def test_child_sees_a_terminal(tmp_path: Path) -> None:
    code = "import sys; print(sys.stdin.isatty(), sys.stdout.isatty(), sys.stderr.isatty())"
    outcome, log = run(tmp_path, [PY, "-c", code])
    assert outcome == Outcome(exit_code=0, signal=None)
    # Exactly the bytes the job wrote: no "\r\n" from the terminal's output processing.
    assert log == b"True True True\n"


def test_child_gets_env_cwd_and_its_own_session(tmp_path: Path) -> None:
    code = (
        "import os; print(os.environ['HJ_TEST'], os.getcwd(), "
        "os.getsid(0) == os.getpid(), os.tcgetpgrp(0) == os.getpgrp())"
    )
    env = {"PATH": os.environ["PATH"], "HJ_TEST": "a b $c ;d"}
    outcome, log = run(tmp_path, [PY, "-c", code], env=env)
    assert outcome.returncode == 0
    assert log == f"a b $c ;d {tmp_path} True True\n".encode()


def test_on_start_gets_the_job_pid(tmp_path: Path) -> None:
    pids: list[int] = []
    outcome, log = run(tmp_path, [PY, "-c", "import os; print(os.getpid())"], on_start=pids.append)
    assert outcome.returncode == 0
    assert pids == [int(log)]
    with pytest.raises(ChildProcessError):
        os.waitpid(pids[0], os.WNOHANG)  # already reaped: no zombie left


def test_exit_code(tmp_path: Path) -> None:
    outcome, _ = run(tmp_path, ["sh", "-c", "exit 3"])
    assert outcome == Outcome(exit_code=3, signal=None)
    assert outcome.returncode == 3


def test_killed_by_signal(tmp_path: Path) -> None:
    outcome, _ = run(tmp_path, ["sh", "-c", "kill -TERM $$"])
    assert outcome == Outcome(exit_code=None, signal=signal.SIGTERM)
    assert outcome.returncode == 128 + 15


def test_signals_are_reset_for_the_job(tmp_path: Path) -> None:
    # Python ignores SIGPIPE, a runner may ignore SIGINT or block signals: the job starts clean.
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        outcome, log = run(tmp_path, ["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"])
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        signal.signal(signal.SIGINT, old)
    assert outcome.returncode == 0
    assert log == b"SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"


def test_missing_command(tmp_path: Path) -> None:
    outcome, log = run(tmp_path, ["handyjobs-no-such-command", "--flag"])
    assert outcome.returncode == 127
    assert log.count(b"\n") == 1
    assert b"'handyjobs-no-such-command'" in log
    assert b"command not found" in log


def test_missing_cwd(tmp_path: Path) -> None:
    log_fd = os.open(tmp_path / "job.log", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        outcome = run_on_pty(["true"], dict(os.environ), str(tmp_path / "gone"), log_fd, None, None)
    finally:
        os.close(log_fd)
    assert outcome.returncode == 127
    assert b"gone" in (tmp_path / "job.log").read_bytes()


def test_empty_argv_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        run(tmp_path, [])


def test_silent_job(tmp_path: Path) -> None:
    outcome, log = run(tmp_path, ["true"])
    assert outcome == Outcome(exit_code=0, signal=None)
    assert log == b""


def test_progress_bar_bytes_are_kept(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "for i in range(0, 101, 25):\n"
        "    sys.stdout.write(f'\\r{i:3d}%|' + '#' * (i // 10)); sys.stdout.flush()\n"
        "print()\n"
        "sys.stderr.write('tab\\tend\\r\\n')\n"
    )
    outcome, log = run(tmp_path, [PY, "-c", code])
    assert outcome.returncode == 0
    expected = "".join(f"\r{i:3d}%|" + "#" * (i // 10) for i in range(0, 101, 25))
    assert log == (expected + "\ntab\tend\r\n").encode()


@pytest.mark.timeout(120)
def test_every_byte_of_a_flood_reaches_the_log(tmp_path: Path) -> None:
    echo = tmp_path / "echo.bin"
    echo_fd = os.open(echo, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        outcome, log = run(tmp_path, [PY, "-c", FLOOD], echo_fd=echo_fd)
    finally:
        os.close(echo_fd)
    assert outcome.returncode == 0
    assert len(log) == len(CHUNK) * CHUNKS
    assert hashlib.sha256(log).digest() == hashlib.sha256(CHUNK * CHUNKS).digest()
    # A pane that keeps up (a file never blocks) gets the same bytes.
    assert hashlib.sha256(echo.read_bytes()).digest() == hashlib.sha256(log).digest()


@pytest.mark.timeout(120)
def test_a_stalled_pane_neither_blocks_the_job_nor_loses_log_bytes(tmp_path: Path) -> None:
    r, w = os.pipe()  # nobody reads r: the pane is stalled
    try:
        outcome, log = run(tmp_path, [PY, "-c", FLOOD], echo_fd=w)
        assert os.get_blocking(w), "echo_fd's flags must be restored"
    finally:
        os.close(r)
        os.close(w)
    assert outcome.returncode == 0
    assert len(log) == len(CHUNK) * CHUNKS
    assert hashlib.sha256(log).digest() == hashlib.sha256(CHUNK * CHUNKS).digest()


def test_a_vanished_pane_is_ignored(tmp_path: Path) -> None:
    r, w = os.pipe()
    os.close(r)  # writes to w now fail with EPIPE
    try:
        outcome, log = run(tmp_path, [PY, "-c", "print('one'); print('two')"], echo_fd=w)
    finally:
        os.close(w)
    assert outcome.returncode == 0
    assert log == b"one\ntwo\n"


def test_grandchild_output_reaches_the_log(tmp_path: Path) -> None:
    code = (
        "import subprocess, sys\n"
        "print('child', flush=True)\n"
        "subprocess.run([sys.executable, '-c', 'print(\"grandchild\")'], check=True)\n"
    )
    outcome, log = run(tmp_path, [PY, "-c", code])
    assert outcome.returncode == 0
    assert log == b"child\ngrandchild\n"


@pytest.mark.timeout(30)
def test_a_grandchild_holding_the_terminal_does_not_hang_the_run(tmp_path: Path) -> None:
    # Like a torchrun worker: its own session, the job's terminal as stdout, outlives the job.
    code = (
        "import subprocess\n"
        "p = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
        "print(p.pid, flush=True)\n"
    )
    outcome, log = run(tmp_path, [PY, "-c", code])
    grandchild = int(log)
    try:
        assert outcome.returncode == 0
    finally:
        os.kill(grandchild, signal.SIGKILL)


def test_no_fd_leaks_and_no_zombies(tmp_path: Path) -> None:
    before = open_fds()
    pids: list[int] = []
    for argv in (["true"], ["sh", "-c", "exit 5"], ["handyjobs-no-such-command"]):
        run(tmp_path, argv, on_start=pids.append)
    assert open_fds() == before
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_the_job_does_not_inherit_the_runners_files(tmp_path: Path) -> None:
    keep = os.open(tmp_path, os.O_RDONLY)
    os.set_inheritable(keep, True)
    try:
        outcome, log = run(tmp_path, [PY, "-c", f"import os; os.fstat({keep})"])
    finally:
        os.close(keep)
    assert outcome.returncode == 1
    assert b"Bad file descriptor" in log


def test_an_error_in_on_start_cleans_up(tmp_path: Path) -> None:
    before = open_fds()
    pids: list[int] = []

    def boom(pid: int) -> None:
        pids.append(pid)
        raise RuntimeError("recording the pid failed")

    with pytest.raises(RuntimeError):
        run(tmp_path, [PY, "-c", "import time; time.sleep(60)"], on_start=boom)
    assert open_fds() == before
    # The hang-up killed the job and it was reaped.
    with pytest.raises(ChildProcessError):
        os.waitpid(pids[0], os.WNOHANG)


def test_default_window_size_without_a_terminal(tmp_path: Path) -> None:
    outcome, log = run(tmp_path, [PY, "-c", "import os; print(*os.get_terminal_size())"])
    assert outcome.returncode == 0
    assert log == b"120 40\n"  # what the tmux backend gives a pane nobody sized


def set_size(fd: int, rows: int, cols: int) -> None:
    """Set the window size of the terminal fd."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_input_is_forwarded_and_the_pane_is_restored(
    tmp_path: Path, tty_pair: tuple[int, int]
) -> None:
    master, pane = tty_pair
    set_size(pane, 30, 100)
    before = termios.tcgetattr(pane)
    code = "import os; print(*os.get_terminal_size()); print('got', input())"

    def type_line(pid: int) -> None:
        # The pane is in raw mode by now: Enter arrives as "\r", as from a real keyboard.
        os.write(master, b"hi\r")

    outcome, log = run(tmp_path, [PY, "-c", code], input_fd=pane, on_start=type_line)
    assert outcome.returncode == 0
    # The job's terminal echoes the line as it arrives (maybe before the job's first print),
    # then the job prints what it read.
    assert sorted(log.splitlines(keepends=True)) == [b"100 30\n", b"got hi\n", b"hi\n"]
    assert termios.tcgetattr(pane) == before
    assert os.get_blocking(pane)


# Runs beside the job: waits for a word in the log, then acts like a user at the pane.
USER = """
import os, signal, sys, time, fcntl, struct, termios
log, word, master, action = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), sys.argv[4]
deadline = time.monotonic() + 20
while word not in open(log, 'rb').read():
    if time.monotonic() > deadline:
        sys.exit('the job never became ready')
    time.sleep(0.01)
if action == 'ctrl-c':
    os.write(master, b'\\x03')
else:  # resize the pane and tell the runner, as tmux does
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack('HHHH', 40, 120, 0, 0))
    os.kill(int(action), signal.SIGWINCH)
"""


def start_user(tmp_path: Path, word: str, master: int, action: str) -> subprocess.Popen[bytes]:
    """Start the USER script against the test's pane."""
    return subprocess.Popen(
        [PY, "-c", USER, str(tmp_path / "job.log"), word, str(master), action],
        pass_fds=(master,),
    )


@pytest.mark.timeout(60)
def test_ctrl_c_on_the_pane_interrupts_the_job(tmp_path: Path, tty_pair: tuple[int, int]) -> None:
    master, pane = tty_pair
    users: list[subprocess.Popen[bytes]] = []
    outcome, log = run(
        tmp_path,
        ["sh", "-c", "echo ready; exec sleep 60"],
        input_fd=pane,
        on_start=lambda pid: users.append(start_user(tmp_path, "ready", master, "ctrl-c")),
    )
    assert users[0].wait(timeout=20) == 0
    assert outcome == Outcome(exit_code=None, signal=signal.SIGINT)
    assert log.startswith(b"ready\n")


@pytest.mark.timeout(60)
def test_pane_resize_reaches_the_job(tmp_path: Path, tty_pair: tuple[int, int]) -> None:
    master, pane = tty_pair
    set_size(pane, 30, 100)
    code = (
        "import os, signal, sys\n"
        "def on_winch(*_):\n"
        "    print('now', *os.get_terminal_size(), flush=True)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGWINCH, on_winch)\n"
        # One write: unbuffered, print() writes each piece on its own, and the resize (sent
        # once "ready" is in the log) could then interrupt the line half-way.
        "os.write(1, ('ready %d %d\\n' % tuple(os.get_terminal_size())).encode())\n"
        "while True:\n"
        "    signal.pause()\n"
    )
    users: list[subprocess.Popen[bytes]] = []
    outcome, log = run(
        tmp_path,
        [PY, "-c", code],
        input_fd=pane,
        on_start=lambda pid: users.append(start_user(tmp_path, "ready", master, str(os.getpid()))),
    )
    assert users[0].wait(timeout=20) == 0
    assert outcome.returncode == 0
    assert log == b"ready 100 30\nnow 120 40\n"


def test_non_terminal_input_is_left_alone(tmp_path: Path) -> None:
    r, w = os.pipe()
    try:
        os.write(w, b"typed\n")
        outcome, log = run(tmp_path, [PY, "-c", "print('ok')"], input_fd=r)
        assert os.read(r, 100) == b"typed\n"  # not consumed, not forwarded
    finally:
        os.close(r)
        os.close(w)
    assert outcome.returncode == 0
    assert log == b"ok\n"


def test_outcome_needs_exactly_one_of_code_and_signal() -> None:
    with pytest.raises(ValueError):
        Outcome(exit_code=None, signal=None)
    with pytest.raises(ValueError):
        Outcome(exit_code=1, signal=9)


def read_available(fd: int) -> bytes:
    """What the terminal master fd has to read right now."""
    os.set_blocking(fd, False)
    parts = []
    try:
        while True:
            parts.append(os.read(fd, 65536))
    except (BlockingIOError, OSError):
        pass
    finally:
        os.set_blocking(fd, True)
    return b"".join(parts)


def test_one_terminal_as_pane_input_and_output(tmp_path: Path, tty_pair: tuple[int, int]) -> None:
    # As in the runner: the pane's terminal is both stdin and stdout.
    master, pane = tty_pair
    outcome, log = run(tmp_path, [PY, "-c", "print('a'); print('b')"], input_fd=pane, echo_fd=pane)
    assert outcome.returncode == 0
    assert log == b"a\nb\n"
    # Raw input mode keeps output processing: the pane still starts each line at column 0.
    assert read_available(master) == b"a\r\nb\r\n"


@pytest.mark.timeout(120)
def test_a_stalled_terminal_pane_still_takes_keystrokes(
    tmp_path: Path, tty_pair: tuple[int, int]
) -> None:
    master, pane = tty_pair  # nobody reads master: the pane stalls once its buffer is full
    code = FLOOD + "print('got', input())\n"

    def type_line(pid: int) -> None:
        os.write(master, b"hi\r")

    outcome, log = run(tmp_path, [PY, "-c", code], input_fd=pane, echo_fd=pane, on_start=type_line)
    assert outcome.returncode == 0
    # The job's terminal echoes "hi" whenever it arrives, maybe amid the flood: take it out.
    assert log.replace(b"hi\n", b"", 1) == CHUNK * CHUNKS + b"got hi\n"
