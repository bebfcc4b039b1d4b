"""The wrapper torchrun starts for each rank: the worker on its own terminal, whole lines out.

``python -mhandyjobs.jobside.rank --python=PYTHON -u SCRIPT ARGS`` (torchrun ``--no-python`` runs
it once per rank; the worker is ``PYTHON -u SCRIPT ARGS``). torchrun hands every worker the same
terminal, and a worker started with ``python -u`` writes a line's text and its newline separately:
two ranks' lines merged on it in 4 runs of 10. So the wrapper runs the worker on a pseudo-terminal
of its own (it still sees a TTY: colours, progress bars), appends every byte it prints to
``rank-N.log`` beside the job's log, and passes on only whole lines, each tagged ``[rank N] `` and
with its carriage-return redraws collapsed, several lines at most in one ``write``. A terminal
takes one ``write`` whole (the kernel holds the tty's write lock for all of it), so lines of
different ranks never mix on the shared terminal, in the pane or in the log.

The wrapper is transparent to torchrun: signals it gets (torchrun signals the process group
of each worker it started, which is the wrapper's) go on to the worker's process group, and
it ends as its worker did, with the same exit code or killed by the same signal. If the
wrapper itself is SIGKILLed, the worker gets SIGHUP from its terminal closing, and the
runner ends every process carrying the run's marker once torchrun is gone.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
from types import FrameType

from handyjobs.core import paths
from handyjobs.core.records import utcnow
from handyjobs.jobside import rotation, terminal
from handyjobs.jobside.tee import run_on_pty

#: Signals passed on to the worker (what torchrun and a person at a terminal send).
FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCONT,
)
#: A line without a newline is passed on anyway past this size (it is not text one reads).
MAX_LINE = 1 << 20


class LineForwarder:
    """Pass whole lines, tagged with the rank and redraws collapsed, to ``fd``."""

    def __init__(self, rank: int, fd: int | None) -> None:
        """Nothing buffered; ``fd`` None forwards nothing (no terminal to forward to)."""
        self.rank, self.fd = rank, fd
        self.partial = b""

    def feed(self, data: bytes) -> None:
        """Take bytes from the worker; write the lines they complete."""
        buf = self.partial + data
        if b"\n" not in buf:
            self.partial = terminal.compact(buf)
            if len(self.partial) > MAX_LINE:
                self._send([self.partial])
                self.partial = b""
            return
        head, _, self.partial = buf.rpartition(b"\n")
        self._send(head.split(b"\n"))

    def flush(self) -> None:
        """At the end: an unfinished last line goes out too, ended, so no other line joins it."""
        if self.partial:
            self._send([self.partial])
            self.partial = b""

    def _send(self, lines: list[bytes]) -> None:
        if self.fd is None:
            return
        out = b"".join(
            terminal.tag_line(self.rank, terminal.render_line(line, colour=True)) + b"\n"
            for line in lines
        )
        view = memoryview(out)
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                select.select([], [self.fd], [])
            except InterruptedError:  # pragma: no cover - retried by Python itself (PEP 475)
                continue
            except OSError:
                # The shared terminal is gone (the runner died): the rank's log has it all.
                self.fd = None
                return


#: Stop signals passed on once: a repeat is the same stop arriving by another way, and it
#: would kill a worker that is saving. ``handyjobs stop`` signals every process of the run
#: (this wrapper and its worker too), then torchrun sends its own copy to each wrapper when it
#: gets to it, seconds later on a loaded machine: past the trainer's window for repeats, that
#: copy killed rank 1 while it saved. Whoever stops escalates with SIGKILL (torchrun after its
#: 30 s, ``stop`` after its grace), so a stop never hangs on a dropped repeat.
ONCE = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


class _Forward:
    """Signals to the worker's process group once it runs; remembered until then."""

    def __init__(self) -> None:
        """No worker yet."""
        self.pid: int | None = None
        self.early: list[int] = []
        self.sent: set[int] = set()

    def started(self, pid: int) -> None:
        """The worker runs: pass on what came before it did."""
        self.pid = pid
        for sig in self.early:
            self._send(sig)

    def handler(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: to the worker now, or once it runs; a stop signal only once."""
        if signum in ONCE:
            if signum in self.sent:
                return
            self.sent.add(signum)
        if self.pid is None:
            self.early.append(signum)
        else:
            self._send(signum)

    def _send(self, sig: int) -> None:
        # The worker leads its own session and process group: signal it as a terminal would.
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


def _note(fd: int, text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, f"[handyjobs] {text}\n".encode(errors="replace"))


def run(command: list[str]) -> tuple[int | None, int | None]:
    """Run the worker as this rank; return its exit code, or the signal that ended it."""

    env = dict(os.environ)
    rank = int(env.get("RANK", "0"))
    job_log = env.get("HANDYJOBS_LOG")
    path = paths.rank_log(job_log, rank) if job_log else os.devnull
    try:
        log_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError:
        path, log_fd = os.devnull, os.open(os.devnull, os.O_WRONLY)
    limit, _ = rotation.limit_from_env(env)
    rotator = rotation.Rotator(path, log_fd, limit) if limit and path != os.devnull else None
    forward = _Forward()
    # A signal a backend's node wrapper set to ignored (a scheduler's time-limit warning, for
    # torchrun's sake) stays ignored here and in the worker: the scheduler signals every process
    # of the step itself, and a worker that started with the default would die of it before its
    # trainer listens. The trainer takes such a SIG_IGN over.
    ignored = os.environ.get("HANDYJOBS_IGNORED_FOR_TORCHRUN", "").split(",")
    for sig in FORWARDED:
        if not (sig.name in ignored and signal.getsignal(sig) is signal.SIG_IGN):
            signal.signal(sig, forward.handler)
    out_fd = 1 if _writable(1) else None
    forwarder = LineForwarder(rank, out_fd)
    several_nodes = env.get("WORLD_SIZE", "1") != env.get("LOCAL_WORLD_SIZE", "1")

    def on_start(pid: int) -> None:
        forward.started(pid)
        _note(log_fd, _started(env, rank, pid, several_nodes))
        if several_nodes and out_fd is not None:
            # The job's log shows every node's ranks together: say which runs where.
            _note(out_fd, f"rank {rank} runs on node {_node(env)} (pid {pid})")

    result = run_on_pty(
        command,
        env,
        os.getcwd(),
        log_fd,
        on_start=on_start,
        echo_fd=None,
        input_fd=None,
        rotator=rotator,
        on_output=forwarder.feed,
        size_fd=out_fd,
    )
    forwarder.flush()
    how = f"exit code {result.exit_code}" if result.signal is None else f"signal {result.signal}"
    _note(log_fd, f"rank {rank} ended {utcnow()}: {how}")
    os.close(log_fd)
    return result.exit_code, result.signal


def _node(env: dict[str, str]) -> str:
    """This node's name: the scheduler's (its node wrapper sets HANDYJOBS_NODE), else the host's."""
    return env.get("HANDYJOBS_NODE") or os.uname().nodename


def _started(env: dict[str, str], rank: int, pid: int, several_nodes: bool) -> str:
    """The rank's first line in its own log: which run, where (its node, on several), when."""
    restart = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    again = f" (torchrun restart {restart})" if restart not in ("", "0") else ""
    where = f"node {_node(env)}, " if several_nodes else ""
    return (
        f"run {env.get('HANDYJOBS_RUN', '?')} rank {rank} ({where}local rank "
        f"{env.get('LOCAL_RANK', '?')}) started {utcnow()}{again}: pid {pid}"
    )


def _writable(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _end_like(exit_code: int | None, sig: int | None) -> None:
    """Exit as the worker did: killed by the same signal, or with the same code."""
    if sig is not None:
        sys.stdout.flush()
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        os.kill(os.getpid(), sig)
        sys.exit(128 + sig)  # a signal that cannot end us (SIGCHLD...): say it as a shell would
    sys.exit(exit_code or 0)


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m handyjobs.jobside.rank --python=PY ARGS...`` (the worker is
    ``PY ARGS...``) or ``... -- COMMAND...``; started by torchrun."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--"]:
        args = args[1:]
    elif args[:1] and args[0].startswith("--python="):
        args = [args[0].removeprefix("--python="), *args[1:]]
    if not args:
        sys.exit("usage: python -m handyjobs.jobside.rank --python=PY ARGS... (run by handyjobs)")
    _end_like(*run(args))


if __name__ == "__main__":
    main()
