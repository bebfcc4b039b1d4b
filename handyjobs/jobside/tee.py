"""Run a command on a pseudo-terminal, copying every byte it prints to the pane and to a log."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import select
import signal
import struct
import termios
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType

from handyjobs.structs import field, frozen

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from handyjobs.jobside.rotation import Rotator

__all__ = ["DEFAULT_WINSIZE", "Outcome", "run_on_pty"]

#: (rows, columns) given to the job's terminal when there is no terminal to copy a size from
#: (a batch job): the tmux pane's default, 120x40. At 200 columns progress bars were drawn
#: wider than the terminals `logs` is read on, and showed there as walls of fragments.
DEFAULT_WINSIZE = (40, 120)

# One read from the pty master; Linux hands out at most a few KiB per read anyway.
_READ_SIZE = 65536
# Pane output held back while the pane is slow; past this we drop pane output, never log bytes.
_ECHO_BACKLOG = 256 * 1024
# Keystrokes held back while the job does not read its terminal (a human cannot type this much).
_INPUT_BACKLOG = 64 * 1024
# Once the job's own process is gone, stop after its terminal has been quiet this long: a
# grandchild (a torchrun worker in its own session) may keep the terminal open for ever.
_QUIET_AFTER_EXIT_S = 0.2
# How often to look for the job's exit while its terminal stays open.
_REAP_INTERVAL_S = 0.05
# After an exception, how long to wait for the job to die of the hangup before giving up on it.
_REAP_ON_ERROR_S = 1.0


@frozen
class Outcome:
    """How the job ended: an exit code, or the signal that killed it."""

    exit_code: int | None
    signal: int | None
    #: Why log writes failed (disk full, ...), when they did; the job ran on regardless.
    log_error: str | None = None
    #: Resources used by the job's process and the descendants it waited for (``wait4``).
    rusage: resource.struct_rusage | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        """Refuse an outcome that is neither (or both) an exit code and a signal."""
        if (self.exit_code is None) == (self.signal is None):
            raise ValueError("an Outcome has exactly one of exit_code and signal")

    @property
    def returncode(self) -> int:
        """The exit code, or 128 + the signal number as a shell reports it."""
        if self.exit_code is not None:
            return self.exit_code
        assert self.signal is not None
        return 128 + self.signal


def run_on_pty(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str,
    log_fd: int,
    on_start: Callable[[int], None] | None = None,
    echo_fd: int | None = 1,
    input_fd: int | None = 0,
    *,
    rotator: Rotator | None = None,
    pane_filter: Callable[[bytes], bytes] | None = None,
    on_output: Callable[[bytes], None] | None = None,
    size_fd: int | None = None,
    join: Sequence[str] = (),
) -> Outcome:
    """Run argv on a fresh pty, copy its output to log_fd and echo_fd, and return its outcome.

    ``rotator`` caps the log's size; ``pane_filter`` changes what the pane shows (never what
    the log gets); ``on_output`` sees every byte too, after the log has it. The job's
    terminal takes its size from ``size_fd`` when given, else from the pane. ``join`` names
    the ``cgroup.procs`` files the job enters before it execs (its run's cgroup), so that all
    it ever starts is found there.
    """
    if not argv:
        raise ValueError("argv is empty: there is no command to run")
    argv = [os.fspath(a) for a in argv]
    input_tty = input_fd if input_fd is not None and _isatty(input_fd) else None
    if size_fd is None or not _isatty(size_fd):
        size_fd = next((fd for fd in (input_tty, echo_fd) if fd is not None and _isatty(fd)), None)

    master, slave = os.openpty()
    restore: list[Callable[[], None]] = []
    pid: int | None = None
    status: int | None = None
    try:
        _prepare_job_terminal(slave, _winsize(size_fd))
        if input_tty is not None:
            restore.append(make_raw(input_tty))
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child execs or exits, coverage never sees it
            _exec_child(argv, env, cwd, master, slave, join)
        os.close(slave)
        slave = -1
        if on_start is not None:
            on_start(pid)
        pump = _Pump(master, log_fd, echo_fd, input_tty, size_fd)
        pump.rotator, pump.pane_filter, pump.on_output = rotator, pane_filter, on_output
        restore.extend(pump.setup())
        status = pump.run(pid)
        return _outcome(status, pump.log_error, pump.rusage)
    finally:
        for undo in reversed(restore):
            _quietly(undo)
        if slave >= 0:
            os.close(slave)
        # Closing the master hangs the terminal up, which sends SIGHUP to whatever still holds it.
        os.close(master)
        if pid is not None and status is None:
            _reap_after_error(pid)


def _isatty(fd: int) -> bool:
    """Whether fd is a terminal; a closed or bad fd is not."""
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _quietly(undo: Callable[[], None]) -> None:
    """Run a clean-up step; a terminal that went away must not mask the real error."""
    with contextlib.suppress(OSError, termios.error):
        undo()


def _winsize(size_fd: int | None) -> bytes:
    """The packed window size of size_fd, or the default when there is none."""
    if size_fd is not None:
        try:
            packed = fcntl.ioctl(size_fd, termios.TIOCGWINSZ, b"\0" * 8)
            rows, cols = struct.unpack("HHHH", packed)[:2]
            if rows and cols:
                return packed
        except OSError:
            pass
    rows, cols = DEFAULT_WINSIZE
    return struct.pack("HHHH", rows, cols, 0, 0)


def _prepare_job_terminal(slave: int, winsize: bytes) -> None:
    """Set the job's terminal size and the few settings that differ from a fresh pty."""
    fcntl.ioctl(slave, termios.TIOCSWINSZ, winsize)
    attrs = termios.tcgetattr(slave)
    # Keep "\n" as "\n" so the log holds exactly the bytes the job wrote (no "\r\n"); the pane's
    # own terminal still turns it into a new line on screen.
    attrs[1] &= ~termios.ONLCR
    # Ctrl-S pressed in the pane reaches this terminal as input: with IXON (a fresh pty's
    # default) it would stop the job's output until a Ctrl-Q, so the job blocks in its next
    # write, its log stops, and its outcome waits for whoever unfreezes it. Without IXON the
    # key is a byte like any other, for a program that wants it (readline's search, an editor).
    attrs[0] &= ~(termios.IXON | termios.IXOFF)
    # No shell runs on this terminal to resume a stopped job, so Ctrl-Z (a habit in a terminal)
    # must not freeze a training run for ever.
    cc = list(attrs[6])
    cc[termios.VSUSP] = b"\0"
    attrs[6] = cc
    termios.tcsetattr(slave, termios.TCSANOW, attrs)


def quiet_pane() -> list[Callable[[], None]]:
    """The runner's pane raw (Ctrl-S is a byte, never a stop of the runner's output) and
    written without blocking (a pane that cannot take a line drops it; the log has every
    byte), from the start: a queued runner must never wait on a pane. The restore steps."""
    steps = []
    for fd, make in ((0, make_raw), (1, nonblocking)):
        with contextlib.suppress(OSError, termios.error):
            if os.isatty(fd):
                steps.append(make(fd))
    return steps


def drop_typed_ahead(fd: int) -> None:
    """Forget keys pressed on the pane before the job started: they were for nobody, and
    must not reach the job's terminal as its first input."""
    with contextlib.suppress(OSError, termios.error):
        termios.tcflush(fd, termios.TCIFLUSH)


def make_raw(fd: int) -> Callable[[], None]:
    """Put the pane's terminal in raw input mode and return the step that restores it."""
    saved = termios.tcgetattr(fd)
    attrs = termios.tcgetattr(fd)
    # Like tty.setraw, but output processing is left on: the job's "\n" must still start a new
    # line on the pane. Input goes through untouched, so Ctrl-C reaches the job's terminal
    # (where its line discipline signals the job) instead of signalling the runner.
    attrs[0] &= ~(termios.BRKINT | termios.ICRNL | termios.INPCK | termios.ISTRIP | termios.IXON)
    attrs[2] = (attrs[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    attrs[3] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
    cc = list(attrs[6])
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    attrs[6] = cc
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    return lambda: termios.tcsetattr(fd, termios.TCSANOW, saved)


# Signals whose disposition a Python parent may have changed (Python itself ignores SIGPIPE and
# SIGXFSZ; a runner may ignore SIGINT or SIGHUP); exec keeps an ignored signal ignored.
_RESET_SIGNALS = tuple(
    getattr(signal, name)
    for name in (
        "SIGINT",
        "SIGTERM",
        "SIGHUP",
        "SIGQUIT",
        "SIGPIPE",
        "SIGXFSZ",
        "SIGCHLD",
        "SIGWINCH",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
    )
    if hasattr(signal, name)
)


def _exec_child(
    argv: list[str],
    env: Mapping[str, str],
    cwd: str,
    master: int,
    slave: int,
    join: Sequence[str] = (),
) -> None:  # pragma: no cover - runs in the forked child
    """In the forked child: join the run's cgroup, take the pty as controlling terminal and
    stdio, then exec argv."""
    code = 127
    try:
        for procs_file in join:
            # Best effort: the runner made the folder and checked it is writable; a job that
            # cannot join is still found by its marker.
            with contextlib.suppress(OSError):
                fd = os.open(procs_file, os.O_WRONLY)
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)
        os.close(master)
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        if slave > 2:
            os.close(slave)
        # Like subprocess's close_fds: the job must not hold the runner's files (its lock, its log).
        os.closerange(3, _max_fd())
        for signum in _RESET_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        try:
            os.chdir(cwd)
        except OSError as exc:
            _child_error(f"cannot enter the folder {cwd!r}: {exc.strerror}")
            os._exit(code)
        try:
            os.execvpe(argv[0], argv, dict(env))
        except FileNotFoundError:
            _child_error(f"cannot run {argv[0]!r}: command not found (check the name and PATH)")
        except PermissionError:
            code = 126  # the shell's code for "found but not executable"
            _child_error(f"cannot run {argv[0]!r}: permission denied (is it executable?)")
        except OSError as exc:
            _child_error(f"cannot run {argv[0]!r}: {exc.strerror}")
    except BaseException:
        pass
    os._exit(code)


def _max_fd() -> int:
    """The highest fd number worth closing in the child."""
    try:
        limit = os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        limit = 0
    return limit if limit > 0 else 65536


def _child_error(message: str) -> None:  # pragma: no cover - runs in the forked child
    """Write one line to the job's terminal, so it lands in the log and on the pane."""
    with contextlib.suppress(OSError):
        os.write(2, f"handyjobs: {message}\n".encode(errors="replace"))


def _outcome(
    status: int, log_error: str | None, rusage: resource.struct_rusage | None = None
) -> Outcome:
    """Turn a waitpid status into an Outcome."""
    if os.WIFSIGNALED(status):
        return Outcome(None, os.WTERMSIG(status), log_error, rusage)
    return Outcome(os.WEXITSTATUS(status), None, log_error, rusage)


def _reap_after_error(pid: int) -> None:
    """Hang the job up, give it a moment to die and reap it, so no zombie is left behind."""
    # Closing the master signals the job only once it holds the terminal; a job still starting
    # up would miss that, so tell it directly as well.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + _REAP_ON_ERROR_S
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done or time.monotonic() >= deadline:
            return
        time.sleep(0.01)


class _Pump:
    """The parent's loop: job output to log and pane, pane keystrokes and size to the job."""

    def __init__(
        self,
        master: int,
        log_fd: int,
        echo_fd: int | None,
        input_fd: int | None,
        size_fd: int | None,
    ) -> None:
        """Remember the fds; nothing is changed until setup()."""
        self.master = master
        self.log_fd = log_fd
        self.echo_fd = echo_fd
        self.input_fd = input_fd
        self.size_fd = size_fd
        self.echo_backlog = bytearray()
        self.input_backlog = bytearray()
        self.log_error: str | None = None
        self.rotator: Rotator | None = None
        self.pane_filter: Callable[[bytes], bytes] | None = None
        self.on_output: Callable[[bytes], None] | None = None
        self.rusage: resource.struct_rusage | None = None
        self.winch_r = -1
        self.winch_w = -1

    def setup(self) -> list[Callable[[], None]]:
        """Make fds non-blocking and watch SIGWINCH; return the steps that undo it all."""
        undo: list[Callable[[], None]] = []
        os.set_blocking(self.master, False)
        for fd in (self.echo_fd, self.input_fd):
            # The pane's stdin and stdout usually share one open file, so restore both, in reverse.
            if fd is not None:
                undo.append(nonblocking(fd))
        if self.size_fd is not None:
            undo.extend(self._watch_winch())
        return undo

    def _watch_winch(self) -> list[Callable[[], None]]:
        """Wake the loop on SIGWINCH through a pipe (a flag alone would wait for poll's timeout)."""
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)

        def on_winch(signum: int, frame: FrameType | None) -> None:
            # A full pipe means a wake-up is already pending.
            with contextlib.suppress(OSError):
                os.write(w, b"\0")

        try:
            previous = signal.signal(signal.SIGWINCH, on_winch)
        except ValueError:  # not the main thread: no resizing, everything else still works
            os.close(r)
            os.close(w)
            return []
        self.winch_r, self.winch_w = r, w

        def restore() -> None:
            signal.signal(signal.SIGWINCH, previous)
            os.close(r)
            os.close(w)

        return [restore]

    def run(self, pid: int) -> int:
        """Pump until the job has exited and its output is drained; return its wait status."""
        status: int | None = None
        master_open = True
        last_data = time.monotonic()
        while True:
            if status is None:
                status = self._try_reap(pid)
                if status is not None:
                    last_data = max(last_data, time.monotonic())
            now = time.monotonic()
            if status is not None:
                if not master_open or now - last_data >= _QUIET_AFTER_EXIT_S:
                    break
                timeout = _QUIET_AFTER_EXIT_S - (now - last_data)
            else:
                timeout = _REAP_INTERVAL_S
            poller = self._poller(master_open)
            try:
                events = poller.poll(max(1, int(timeout * 1000) + 1))
            except InterruptedError:  # pragma: no cover - poll retries EINTR itself (PEP 475)
                continue
            # One fd may serve several roles (stdin and stdout on one terminal): check each.
            gone = select.POLLHUP | select.POLLERR
            for fd, mask in events:
                if fd == self.master:
                    if mask & (select.POLLIN | gone):
                        got, master_open = self._drain_master()
                        if got:
                            last_data = time.monotonic()
                    if mask & select.POLLOUT and master_open:
                        self._flush_input()
                if fd == self.input_fd and mask & (select.POLLIN | gone):
                    self._read_input()
                if fd == self.echo_fd and mask & (select.POLLOUT | gone):
                    self._flush_echo()
                if fd == self.winch_r:
                    self._resize()
        self._flush_echo()
        return status

    def _poller(self, master_open: bool) -> select.poll:
        """A poll set for what the loop can make progress on right now."""
        masks: dict[int, int] = {}
        if master_open:
            masks[self.master] = select.POLLIN | (select.POLLOUT if self.input_backlog else 0)
            if self.input_fd is not None:
                masks[self.input_fd] = masks.get(self.input_fd, 0) | select.POLLIN
        if self.echo_fd is not None and self.echo_backlog:
            masks[self.echo_fd] = masks.get(self.echo_fd, 0) | select.POLLOUT
        if self.winch_r >= 0:
            masks[self.winch_r] = select.POLLIN
        poller = select.poll()
        for fd, mask in masks.items():
            poller.register(fd, mask)
        return poller

    def _drain_master(self) -> tuple[bool, bool]:
        """Read what the job printed; return (got any bytes, master still open)."""
        got = False
        # Bounded so that keystrokes and resizes are still served while a job floods output.
        for _ in range(64):
            try:
                data = os.read(self.master, _READ_SIZE)
            except BlockingIOError:
                return got, True
            except OSError as exc:
                if exc.errno == errno.EIO:  # every holder of the job's terminal closed it
                    return got, False
                raise
            if not data:
                return got, False
            got = True
            self._log(data)
            if self.on_output is not None:
                self.on_output(data)
            if self.pane_filter is not None:
                data = self.pane_filter(data)
            self._echo(data)
        return got, True

    def _try_reap(self, pid: int) -> int | None:
        """The job's wait status if it has exited (keeping what it used), else None."""
        # A ChildProcessError here means the caller reaped our child (a SIGCHLD handler): its
        # exit code is lost, so let that error surface rather than invent an outcome.
        done, status, rusage = os.wait4(pid, os.WNOHANG)
        if not done:
            return None
        self.rusage = rusage
        return status

    def _log(self, data: bytes) -> None:
        """Write all of data to the log (rotating it past its cap)."""
        if self.rotator is None:
            self._write_log(data)
        else:
            self.rotator.write(data, self._write_log)

    def _write_log(self, data: bytes) -> None:
        """Write all of data to the log; a failing log must not stop the job or its pane."""
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.log_fd, view)
            except BlockingIOError:
                select.select([], [self.log_fd], [])
                continue
            except OSError as exc:
                # Disk full or the like: keep the job running and report it once on the pane;
                # later chunks are tried again in case space comes back.
                if self.log_error is None:
                    self.log_error = f"writing the log failed: {exc.strerror or exc}"
                    self._echo(f"\r\nhandyjobs: {self.log_error}\r\n".encode())
                return
            view = view[n:]

    def _echo(self, data: bytes) -> None:
        """Copy data to the pane if it keeps up; otherwise hold a little, then drop."""
        if self.echo_fd is None:
            return
        if self.echo_backlog:
            if len(self.echo_backlog) + len(data) <= _ECHO_BACKLOG:
                self.echo_backlog += data
            return
        n = self._write_echo(data)
        if n is not None and n < len(data) and len(data) - n <= _ECHO_BACKLOG:
            self.echo_backlog += data[n:]

    def _flush_echo(self) -> None:
        """Write what the pane could not take earlier, as far as it takes it now."""
        if self.echo_fd is None or not self.echo_backlog:
            return
        n = self._write_echo(bytes(self.echo_backlog))
        if n is None:
            return
        del self.echo_backlog[:n]

    def _write_echo(self, data: bytes) -> int | None:
        """One non-blocking write to the pane; None when the pane is gone for good."""
        assert self.echo_fd is not None
        try:
            return os.write(self.echo_fd, data)
        except BlockingIOError:
            return 0
        except OSError:
            # EIO or EPIPE: the pane or its terminal went away. The log is the record; carry on.
            self.echo_fd = None
            self.echo_backlog.clear()
            return None

    def _read_input(self) -> None:
        """Take keystrokes from the pane for the job; stop listening at EOF or error."""
        assert self.input_fd is not None
        try:
            data = os.read(self.input_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.input_fd = None
            return
        if len(self.input_backlog) + len(data) <= _INPUT_BACKLOG:
            self.input_backlog += data
        self._flush_input()

    def _flush_input(self) -> None:
        """Hand held keystrokes to the job's terminal as far as it takes them."""
        if not self.input_backlog:
            return
        try:
            n = os.write(self.master, bytes(self.input_backlog))
        except BlockingIOError:
            return
        except OSError:
            n = len(self.input_backlog)  # the job's terminal is gone; nobody will read them
        del self.input_backlog[:n]

    def _resize(self) -> None:
        """Copy the pane's new size to the job's terminal, which signals SIGWINCH to the job."""
        try:
            while os.read(self.winch_r, 64):
                pass
        except BlockingIOError:
            pass
        with contextlib.suppress(OSError):
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, _winsize(self.size_fd))


def nonblocking(fd: int) -> Callable[[], None]:
    """Make fd non-blocking and return the step that restores its flags."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)

    def restore() -> None:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)

    return restore
