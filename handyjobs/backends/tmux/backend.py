"""The tmux backend: the runner in a tagged tmux session on this machine.

Every tmux command runs ``tmux`` on our socket (``HANDYJOBS_TMUX_SOCKET``: ``tmux -L NAME``, or
``-S PATH`` for a path) through :func:`server`. ``new-session`` gets the runner's argv after
``--``, so tmux execs the runner directly and no shell ever sees the job's arguments.

A session is ours only if we tagged it when we made it: the user option ``@handyjobs-run``
holds the run id, set in the same tmux invocation as ``new-session`` (a separate call would
be too late for a runner that exits at once). A session of the job's name that carries no
tag, or another run's, is never killed; the new run then gets another session name.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from handyjobs.backends.base import Launched, LaunchRequest
from handyjobs.backends.tmux.handle import TmuxHandle
from handyjobs.core import cgroups, paths, procs, shell
from handyjobs.core.procs import Ended
from handyjobs.core.records import ClusterState, Run
from handyjobs.errors import TmuxError, UsageError
from handyjobs.structs import frozen

SOCKET_ENV = "HANDYJOBS_TMUX_SOCKET"
TAG = "@handyjobs-run"
#: The job's terminal size when the caller has no terminal to take it from (tmux's default
#: 80x24 wraps logs early; 200 columns made progress bars that `logs` showed as walls).
WIDTH, HEIGHT = 120, 40


def pane_size() -> tuple[int, int]:
    """The job's terminal size until someone attaches: the caller's terminal's, within reason
    (a progress bar is then drawn as wide as the screen it will be read on), else 120x40."""
    for fd in (1, 2, 0):
        try:
            cols, rows = os.get_terminal_size(fd)
        except OSError:
            continue
        if cols and rows:
            return min(max(cols, 40), 300), min(max(rows, 10), 100)
    return WIDTH, HEIGHT


class TmuxMissing(UsageError):
    """tmux is not installed."""


def tmux_binary() -> str:
    """The tmux executable, or a clear error saying how to install it."""
    found = shell.which("tmux")
    if not found:
        raise TmuxMissing(
            "tmux is not installed; install it (e.g. `sudo apt-get install tmux`) and try again"
        )
    return found


def socket_args() -> list[str]:
    """``-L NAME``, or ``-S PATH`` when ``HANDYJOBS_TMUX_SOCKET`` is a path; else nothing."""
    sock = os.environ.get(SOCKET_ENV)
    if not sock:
        return []
    return ["-S", sock] if "/" in sock else ["-L", sock]


@frozen
class TmuxResult:
    """What one tmux command gave: its exit code, and its output and errors as lines."""

    returncode: int
    stdout: list[str]
    stderr: list[str]


class Tmux:
    """The tmux server on our socket, driven by running ``tmux`` itself."""

    def cmd(self, *args: str) -> TmuxResult:
        """Run one tmux command; its output lines without the trailing blank ones."""
        proc = subprocess.run(
            [tmux_binary(), *socket_args(), *args],
            capture_output=True,
            text=True,
            errors="backslashreplace",
            check=False,
        )
        out = proc.stdout.split("\n")
        while out and not out[-1]:
            out.pop()
        return TmuxResult(proc.returncode, out, [line for line in proc.stderr.split("\n") if line])


def server() -> Tmux:
    """The tmux server on our socket.

    Measured: libtmux, which these commands went through before, only wrapped this same call
    here, and its import (about 50 ms, twice Python's own start-up) was the largest part of
    ``start``; with it, ``start`` took 6.8 times ``python -c pass``, without it 3.8 times.
    """
    return Tmux()


def sessions() -> dict[str, tuple[str, str]]:
    """Session id -> (name, run-id tag or "") of every session on our socket."""
    srv = server()
    proc = srv.cmd("list-sessions", "-F", f"#{{session_id}}\t#{{session_name}}\t#{{{TAG}}}")
    if proc.returncode != 0:  # "no server running": no sessions
        return {}
    out = {}
    for line in proc.stdout:
        parts = line.split("\t")
        if len(parts) == 3:
            out[parts[0]] = (parts[1], parts[2])
    return out


#: How often ``launch`` asks again when the tmux server went away under it (see there).
SERVER_GONE_TRIES = 4
_SERVER_GONE = re.compile(r"server exited unexpectedly|lost server|no server running")


class TmuxBackend:
    """Runs the runner in a detached, tagged tmux session on this machine."""

    name = "tmux"
    queues = False

    def check(self) -> None:
        """tmux must be installed."""
        tmux_binary()

    def session_name(self, wanted: str, run: int, run_id: str) -> str:
        """``wanted``, else ``wanted-rN``, else one with the run id: never a taken name."""
        taken = {name for name, _ in sessions().values()}
        for candidate in (wanted, f"{wanted}-r{run}", f"{wanted}-{run_id}"):
            if candidate not in taken:
                return candidate
        raise TmuxError(f"tmux sessions named {wanted} exist; remove them or pick another --name")

    def launch(self, req: LaunchRequest) -> Launched:
        """Create the session running the runner's argv (no shell), tagged with the run id."""
        for attempt in range(SERVER_GONE_TRIES):
            with _not_the_jobs():
                proc = self._new_session(req)
            # The server exits when its last session ends (a job that just finished); a client
            # that reached it in that moment gets "server exited unexpectedly" and made nothing.
            # Asking again starts a fresh server.
            gone = " ".join(proc.stderr)
            if proc.returncode == 0 or proc.stdout or not _SERVER_GONE.search(gone):
                break
            time.sleep(0.05 * (attempt + 1))
        if proc.returncode != 0 or not proc.stdout:
            msg = " ".join(proc.stderr).strip() or f"exit code {proc.returncode}"
            if proc.stdout:  # the session was made (we know its id) but not tagged
                server().cmd("kill-session", "-t", proc.stdout[0].partition(" ")[0])
            raise TmuxError(f"tmux could not start the job's session: {msg}")
        session_id, _, pane_pid = proc.stdout[0].partition(" ")
        if pane_pid.isdigit():
            _leave_the_jobs_cgroup(int(pane_pid))
        runner = procs.proc_id(int(pane_pid)) if pane_pid.isdigit() else None
        return Launched(TmuxHandle(req.session, session_id).stored(), runner)

    def _new_session(self, req: LaunchRequest) -> TmuxResult:
        size = pane_size()
        return server().cmd(
            "new-session",
            "-d",
            "-P",
            "-F",
            "#{session_id} #{pane_pid}",
            "-s",
            req.session,
            "-c",
            req.cwd,
            "-x",
            str(size[0]),
            "-y",
            str(size[1]),
            # Visible in `ps` for the moment tmux runs, which is fine for a run id: the
            # caller's environment never goes on a command line (it is in a 0600 file).
            "-e",
            f"{procs.RUNNER_ENV}={req.run_id}",
            "--",
            *req.argv,
            ";",
            "set-option",
            "-t",
            f"={req.session}:",  # set-option takes a pane target: "=NAME:" is that session
            TAG,
            req.run_id,
        )

    def runner_alive(self, run: Run) -> bool:
        """The runner's pid still names the process that started then (or carries the id)."""
        return run.runner is not None and procs.is_same(run.runner, run.run_id)

    def leftover_pids(self, run: Run) -> tuple[int, ...]:
        """Processes that still carry the run's marker."""
        return tuple(sorted(procs.members(run.run_id)))

    def terminate(self, run: Run, grace_s: float) -> Ended:
        """End the job's processes by marker; the runner (unmarked) records the outcome."""
        return procs.terminate(run.run_id, grace_s=grace_s)

    def end_runner(self, run: Run) -> None:
        """Kill a runner that hangs (checked by identity), then its session if it is tagged."""
        if run.runner is not None and procs.is_same(run.runner, run.run_id):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(run.runner.pid, signal.SIGKILL)
        sid = TmuxHandle.of(run).session_id
        live = sessions()
        if sid in live and live[sid][1] == run.run_id:
            server().cmd("kill-session", "-t", sid)

    def session_alive(self, run: Run) -> bool:
        """The session made for this run exists and still carries its tag."""
        handle = TmuxHandle.of(run)
        live = sessions()
        if handle.session_id is not None:
            return handle.session_id in live and live[handle.session_id][1] == run.run_id
        return any(n == handle.session and tag == run.run_id for n, tag in live.values())

    def attach_argv(self, run: Run) -> list[str]:
        """``tmux attach-session`` (``switch-client`` from inside our own server)."""
        handle = TmuxHandle.of(run)
        target = handle.session_id or f"={handle.session}"
        base = [tmux_binary(), *socket_args()]
        if inside_same_server():
            return [*base, "switch-client", "-t", target]
        return [*base, "attach-session", "-t", target]

    def send(self, run: Run, text: str) -> None:
        """``send-keys -l`` (literally: no key names) then Enter, into our tagged session."""
        sid = TmuxHandle.of(run).session_id
        live = sessions()
        if sid is None or sid not in live or live[sid][1] != run.run_id:
            raise TmuxError("the job's tmux session is gone; nothing can read what you send")
        srv = server()
        # "--": a text that starts with "-" is text, not send-keys' options.
        for args in (("-l", "--", text), ("Enter",)):
            proc = srv.cmd("send-keys", "-t", sid, *args)
            if proc.returncode != 0:
                raise TmuxError(f"tmux could not send the text: {' '.join(proc.stderr)}")

    def hold(self, run: Run, held: bool) -> None:
        """Nothing to do here: handyjobs' own queue holds the run (its record says so)."""

    def cancel_many(self, runs: Sequence[Run]) -> list[str]:
        """None: each run is ended by itself (``terminate``), identity checked."""
        return []

    def pause(self, run: Run, paused: bool) -> int:
        """SIGSTOP (or SIGCONT) to every process of the run, identity checked; how many."""
        return procs.pause(run.run_id, paused)

    def signal(self, run: Run, sig: int) -> int:
        """``sig`` to every process of the run, identity checked; how many got it."""
        count = 0
        for pid, start in procs.members(run.run_id).items():
            # A rank wrapper passes what it gets on to its worker, which gets it directly here:
            # signalling both would deliver it twice (a handler that dumps stacks runs twice).
            if not procs.is_rank_wrapper(pid):
                count += procs.signal_verified(pid, start, run.run_id, sig)
        return count

    def log_path(self, name: str, root: Path) -> Path:
        """The log the runner tees into, in the job's folder."""
        return paths.log_path(name, root)

    def observe(self, run: Run) -> ClusterState | None:
        """No scheduler here: the runner's pid and status file say everything."""
        return None


@contextlib.contextmanager
def _not_the_jobs() -> Iterator[None]:
    """Start tmux without the marker of a job this command may run inside.

    A job that runs ``handyjobs start`` itself would otherwise hand its marker to the tmux
    server it starts (and so to every runner of that server): stopping the outer job would
    then end the inner jobs. What handyjobs starts is never the job's.
    """
    saved = {k: os.environ.pop(k) for k in (procs.MARKER_ENV, procs.RUNNER_ENV) if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _leave_the_jobs_cgroup(pane_pid: int) -> None:
    """Move the tmux server and the new runner out of a job's cgroup this command runs in."""
    if not cgroups.inside_a_run():
        return
    proc = server().cmd("display-message", "-p", "#{pid}")
    pids = [pane_pid]
    if proc.returncode == 0 and proc.stdout and proc.stdout[0].isdigit():
        pids.insert(0, int(proc.stdout[0]))
    for pid in pids:
        cgroups.move_out(pid)


def inside_same_server() -> bool:
    """True when this process runs inside a pane of the server on our socket."""
    current = os.environ.get("TMUX", "").split(",")[0]
    if not current:
        return False
    proc = server().cmd("list-sessions", "-F", "#{socket_path}")
    return proc.returncode == 0 and bool(proc.stdout) and proc.stdout[0].strip() == current


#: The core's half of this backend, as :func:`handyjobs.backends.base.get` finds it.
BACKEND = TmuxBackend
