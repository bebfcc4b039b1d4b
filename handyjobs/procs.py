"""Find every process of a job and end it, torchrun's workers included.

torchrun starts each worker in its own session, so signalling the job's process group misses
them. A job's processes are found two ways: the ``HANDYJOBS_RUN_ID`` marker every process of
the run inherits in its environment, and descent from the runner (a child subreaper, so
orphaned workers are re-parented to it rather than to init).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from handyjobs.paths import pid_alive

_PROC = Path("/proc")


def _all_pids() -> list[int]:
    try:
        return [int(p.name) for p in _PROC.iterdir() if p.name.isdigit()]
    except FileNotFoundError:  # no /proc: nothing can be found this way
        return []


def _ppid(pid: int) -> int | None:
    try:
        stat = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None


def _is_zombie(pid: int) -> bool:
    try:
        stat = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 :][:1] in (b"Z", b"X")


def is_running(pid: int) -> bool:
    """True for a live process; False for a gone one or a zombie waiting to be reaped."""
    return pid_alive(pid) and not _is_zombie(pid)


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        environ = (_PROC / str(pid) / "environ").read_bytes()
    except OSError:  # gone, or another user's process
        return False
    return marker in environ.split(b"\0")


def job_pids(run_id: str, runner_pid: int | None = None) -> set[int]:
    """Live (non-zombie) processes of one run: marked with its run id or below its runner."""
    marker = f"HANDYJOBS_RUN_ID={run_id}".encode()
    me = os.getpid()
    pids = _all_pids()
    found = {p for p in pids if p != me and _has_marker(p, marker)}
    if runner_pid:
        children: dict[int, list[int]] = {}
        for p in pids:
            parent = _ppid(p)
            if parent is not None:
                children.setdefault(parent, []).append(p)
        stack = list(children.get(runner_pid, []))
        while stack:
            p = stack.pop()
            if p not in found and p != me:
                found.add(p)
            stack.extend(children.get(p, []))
    found.discard(runner_pid or -1)
    return {p for p in found if not _is_zombie(p)}


def signal_all(pids: Iterable[int], sig: int, group_leader: int | None = None) -> None:
    """Send ``sig`` to each pid (and to the job's process group); gone processes are fine."""
    if group_leader:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group_leader, sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def terminate(
    run_id: str,
    runner_pid: int | None,
    main_pid: int | None,
    grace_s: float = 10.0,
    poll_s: float = 0.05,
) -> tuple[set[int], set[int]]:
    """SIGTERM every process of the run, SIGKILL what is left after ``grace_s``.

    Returns (every pid seen, pids still alive at the end): the second set is empty on success.
    """
    seen = job_pids(run_id, runner_pid)
    if main_pid and pid_alive(main_pid) and not _is_zombie(main_pid):
        seen.add(main_pid)
    # The main process leads its own session and process group (the runner made it so).
    signal_all(seen, signal.SIGTERM, group_leader=main_pid if main_pid in seen else None)
    deadline = time.monotonic() + grace_s
    alive = seen
    while time.monotonic() < deadline:
        alive = job_pids(run_id, runner_pid)
        seen |= alive
        if not alive:
            return seen, set()
        time.sleep(poll_s)
    signal_all(alive, signal.SIGKILL, group_leader=main_pid)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        alive = job_pids(run_id, runner_pid)
        if not alive:
            return seen, set()
        signal_all(alive, signal.SIGKILL)
        time.sleep(poll_s)
    return seen, alive


def set_child_subreaper() -> bool:
    """Make this process adopt its orphaned descendants (Linux); False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_child_subreaper = 36
        return int(libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False
