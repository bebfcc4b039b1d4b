"""The one reader of ``/proc/PID/stat``: a process's state, start time and CPU and memory use.

Linux only, standard library only, so every layer may use it (process identity in
``core/procs``, usage in ``jobside/sampler``, vouching for a driver's pid in ``gpus/pidinfo``).
"""

from __future__ import annotations

import os

#: Clock ticks per second: the unit of the start time and the CPU times in ``stat``.
TICKS = os.sysconf("SC_CLK_TCK")
#: Bytes per page: the unit of the resident set size in ``stat``.
PAGE = os.sysconf("SC_PAGE_SIZE")

# Field 3 (the state) is index 0 of what follows the command name; the rest follow man 5 proc.
_STATE, _UTIME, _STIME, _START, _RSS = 0, 11, 12, 19, 21


def stat_fields(pid: int) -> list[bytes] | None:
    """Fields 3 onwards of ``/proc/PID/stat`` (after the command name), or None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields if len(fields) > _RSS else None


def state(pid: int) -> bytes | None:
    """The process's state letter (``R``, ``S``, ``T``, ``Z``...), or None when it is gone."""
    fields = stat_fields(pid)
    return fields[_STATE] if fields else None


def start_ticks(pid: int, live_only: bool = False) -> int | None:
    """The start time in clock ticks after boot (field 22); None when gone (or, with
    ``live_only``, a zombie: its pid is about to be free for reuse)."""
    fields = stat_fields(pid)
    if fields is None or (live_only and fields[_STATE] in (b"Z", b"X")):
        return None
    return int(fields[_START])


def cpu_and_rss(pid: int) -> tuple[float, int] | None:
    """CPU seconds used so far (user and system) and the resident set in bytes, or None."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    try:
        return (int(fields[_UTIME]) + int(fields[_STIME])) / TICKS, int(fields[_RSS]) * PAGE
    except ValueError:
        return None


def parent(pid: int) -> int | None:
    """The parent's pid (field 4), or None when the process is gone."""
    fields = stat_fields(pid)
    return int(fields[1]) if fields else None


def descends(pid: int, root: int) -> bool:
    """True when ``pid`` is ``root`` or one of its descendants now (its parents lead there)."""
    seen = 0
    while pid > 1 and seen < 512:  # a bound: a chain that changes while read cannot loop
        if pid == root:
            return True
        up = parent(pid)
        if up is None:
            return False
        pid, seen = up, seen + 1
    return False
