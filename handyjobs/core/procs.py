"""Find the processes of a run by identity, and end them; never touch one that is not ours.

A process belongs to a run only if, at the moment it is signalled, it is a member of the run's
cgroup (:mod:`handyjobs.core.cgroups`) and has the start time it had when it was found. Where
the run got no cgroup, membership falls back to the run's marker (``HANDYJOBS_RUN_ID=<run id>``
in the environment), which a process that scrubs its environment or rewrites its title loses.
A pid alone is a guess: pids are reused. Signals go through a pidfd where the kernel has them
(Linux 5.3+), opened before the identity check, so a process that exits and whose pid is
reused in between is never hit.

torchrun starts each worker in its own session, so signalling the job's process group misses
them; a cgroup (or the marker) reaches every process the job starts, however it detaches.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from handyjobs import procfs
from handyjobs.core import cgroups
from handyjobs.core.records import ProcId
from handyjobs.structs import frozen

MARKER_ENV = "HANDYJOBS_RUN_ID"
#: Put on the runner itself (through tmux's ``new-session -e``), so the runner is not among
#: the processes that carry the job's marker, yet can be recognised.
RUNNER_ENV = "HANDYJOBS_RUNNER_OF"

_PROC = Path("/proc")
#: The module of handyjobs' rank wrapper, which torchrun runs around each rank's worker.
RANK_WRAPPER = "handyjobs.jobside.rank"


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks after boot (field 22 of stat), or None."""
    return procfs.start_ticks(pid)


def proc_id(pid: int) -> ProcId | None:
    """The identity of a live process, or None when it is gone."""
    start = start_time(pid)
    return None if start is None else ProcId(pid, start)


def is_running(pid: int) -> bool:
    """True for a live process; False for a gone one or a zombie waiting to be reaped."""
    state = procfs.state(pid)
    return state is not None and state not in (b"Z", b"X")


def is_same(ident: ProcId, token: str | None = None) -> bool:
    """True while the process ``ident`` names still runs (same pid and same start time).

    Records of the first release have no start time; for those the process must at least
    carry ``token`` (the run id) in its command line or environment.
    """
    if not is_running(ident.pid):
        return False
    if ident.start is not None:
        return start_time(ident.pid) == ident.start
    if token is None:
        return False
    needle = token.encode()
    for part in ("cmdline", "environ"):
        with contextlib.suppress(OSError):
            if needle in (_PROC / str(ident.pid) / part).read_bytes():
                return True
    return False


def is_rank_wrapper(pid: int) -> bool:
    """True when the process is handyjobs' rank wrapper (read from its command line): it
    passes what it gets on to its worker, so a signal meant for the worker goes to the worker."""
    try:
        return RANK_WRAPPER.encode() in (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False


def _environ(pid: int) -> list[bytes]:
    try:
        return (_PROC / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:  # gone, or another user's process
        return []


def has_marker(pid: int, run_id: str) -> bool:
    """True when the process carries ``HANDYJOBS_RUN_ID=<run_id>`` in its environment."""
    return f"{MARKER_ENV}={run_id}".encode() in _environ(pid)


def _all_pids() -> list[int]:
    try:
        return [int(p.name) for p in _PROC.iterdir() if p.name.isdigit()]
    except FileNotFoundError:  # no /proc: nothing can be found this way
        return []


def members(run_id: str, exclude: Iterable[int] = ()) -> dict[int, int]:
    """Live processes of the run: pid -> start time.

    Found by containment in the run's cgroup when it has one (whatever their environment or
    title), else by the ``HANDYJOBS_RUN_ID`` marker.
    """
    skip = {os.getpid(), *exclude}
    group = cgroups.existing(run_id)
    if group.dirs:
        candidates: Iterable[int] = group.members()
    else:
        marker = f"{MARKER_ENV}={run_id}".encode()
        candidates = (p for p in _all_pids() if marker in _environ(p))
    found: dict[int, int] = {}
    for pid in candidates:
        if pid in skip:
            continue
        start = start_time(pid)
        if start is not None and is_running(pid):
            found[pid] = start
    return found


def belongs(pid: int, run_id: str) -> bool:
    """True when the process is the run's: in its cgroup, or (without one) marked with it."""
    group = cgroups.existing(run_id)
    return group.contains(pid) if group.dirs else has_marker(pid, run_id)


def signal_verified(pid: int, start: int, run_id: str, sig: int) -> bool:
    """Send ``sig`` to ``pid`` only if it is still the run's process that started at ``start``.

    Returns True when the signal was sent.
    """
    pidfd = -1
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        except OSError:
            pidfd = -1  # an old kernel: fall back to kill after the check
    try:
        # With a pidfd held, the checks read the process the pidfd names (or, if it died and
        # the pid was reused, a process the pidfd does not name: then the signal fails).
        if start_time(pid) != start or not belongs(pid, run_id):
            return False
        try:
            if pidfd >= 0:
                signal.pidfd_send_signal(pidfd, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    finally:
        if pidfd >= 0:
            os.close(pidfd)


@frozen
class Ended:
    """What :func:`terminate` did: every pid it signalled, and the ones still alive after."""

    pids: tuple[int, ...]
    left: tuple[int, ...]
    #: The ones that outlived the grace and got SIGKILL.
    killed: tuple[int, ...] = ()


def terminate(
    run_id: str,
    grace_s: float = 10.0,
    exclude: Iterable[int] = (),
    first: int = signal.SIGTERM,
    poll_s: float = 0.05,
) -> Ended:
    """Signal every process of the run (``first``, SIGKILL after ``grace_s``) until none is left.

    Processes are found again on every round (:func:`members`), so children forked meanwhile
    are ended too. Returns every pid it ended (signalled, or gone by itself once found) and those
    that survived SIGKILL (normally none).
    """
    skip = tuple(exclude)
    seen: dict[int, int] = {}
    killed: set[int] = set()
    sig = first
    deadline = time.monotonic() + grace_s
    while True:
        found = members(run_id, skip)
        if not found:
            return Ended(tuple(sorted(seen)), (), tuple(sorted(killed)))
        for pid, start in found.items():
            if sig == first and seen.get(pid) == start:
                continue  # asked once already; SIGKILL is sent again every round
            if signal_verified(pid, start, run_id, sig) or start_time(pid) in (None, start):
                # Signalled, or it ended between the look and the signal (a rank wrapper
                # passes our SIGTERM on to its worker first): either way it was ours and ended.
                seen[pid] = start
                if sig == signal.SIGKILL and sig != first:
                    killed.add(pid)
                if sig == first:  # a paused (stopped) process acts on it only once continued
                    signal_verified(pid, start, run_id, signal.SIGCONT)
        now = time.monotonic()
        if sig != signal.SIGKILL and now >= deadline:
            sig = signal.SIGKILL
            deadline = now + 5.0
            continue
        if sig == signal.SIGKILL and now >= deadline:
            return Ended(tuple(sorted(seen)), tuple(sorted(found)), tuple(sorted(killed)))
        time.sleep(poll_s)


def set_child_subreaper() -> bool:
    """Make this process adopt its orphaned descendants (Linux); False where unsupported."""
    try:
        import ctypes  # lazy: ctypes only for the runner (start-up)

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_child_subreaper = 36
        return int(libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def reap_children() -> None:
    """Collect the exit statuses of finished children (we are the subreaper of the job's tree)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


#: Seconds :func:`pause` waits for every process of the run to show the change.
SETTLE_S = 5.0


def _settled(pid: int, stopped: bool) -> bool:
    """True when the process shows the change: stopped (state T), or running again, or gone."""
    state = procfs.state(pid)
    return state is None or state in (b"Z", b"X") or (state == b"T") == stopped


def pause(run_id: str, stopped: bool) -> int:
    """SIGSTOP (``stopped``) or SIGCONT to every process of the run (identity checked), and to
    any that appears meanwhile, until each shows it; how many got it."""
    sig = signal.SIGSTOP if stopped else signal.SIGCONT
    got: dict[int, int] = {}
    deadline = time.monotonic() + SETTLE_S
    while True:
        found = members(run_id)
        fresh = {pid: start for pid, start in found.items() if got.get(pid) != start}
        for pid, start in fresh.items():
            if signal_verified(pid, start, run_id, sig):
                got[pid] = start
        if all(_settled(pid, stopped) for pid in found) or time.monotonic() > deadline:
            return len(got)
        time.sleep(0.02)
