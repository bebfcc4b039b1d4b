"""A size cap on a log that is being written: ``output.log`` becomes ``output.log.1``.

The writer keeps its file descriptor: the fresh file is ``dup2``-ed onto it, so every holder
of the number (the runner's own notes, the tee) writes to the new file from then on. Two
files are kept, the live one and the one before it, so the last lines are never lost; a
reader (``logs``) reads both, and ``logs -f`` follows the rename (it copies the old file to
its end, then starts the new one). The cut is made after a newline when the data has one.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Mapping

from handyjobs.core import logs

MAX_ENV = "HANDYJOBS_LOG_MAX_MB"
#: A generous default: a chatty job for days, not a disk filled by a runaway loop.
DEFAULT_MAX_MB = 1024.0
#: Past the cap, how far a line without a newline may run before it is cut anyway.
SLACK = 1 << 20
SUFFIX = logs.SUFFIX
previous = logs.previous


def limit_from_env(env: Mapping[str, str]) -> tuple[int | None, str | None]:
    """The cap in bytes from ``HANDYJOBS_LOG_MAX_MB`` (None: no cap), and a note if it was bad."""
    text = env.get(MAX_ENV, "").strip()
    if not text:
        return int(DEFAULT_MAX_MB * (1 << 20)), None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        note = f"{MAX_ENV}={text!r} is not a size in MB; using {DEFAULT_MAX_MB:g}"
        return int(DEFAULT_MAX_MB * (1 << 20)), note
    if value == 0:
        return None, None  # 0: never rotate
    return max(1, int(value * (1 << 20))), None


class Rotator:
    """Counts what is written to ``fd`` (opened on ``path``) and rotates it past ``limit``."""

    def __init__(self, path: str, fd: int, limit: int) -> None:
        """Start counting from the file's current size."""
        self.path, self.fd, self.limit = path, fd, limit
        try:
            self.size = os.fstat(fd).st_size
        except OSError:
            self.size = 0

    def write(self, data: bytes, write: Callable[[bytes], None]) -> None:
        """Hand ``data`` to ``write``, rotating at a line end once the file is over the cap."""
        total = self.size + len(data)
        if total < self.limit:
            write(data)
            self.size = total
            return
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            if total < self.limit + SLACK:
                write(data)
                self.size = total
                return
            cut = len(data)
        write(data[:cut])
        self.rotate()
        rest = data[cut:]
        if rest:
            write(rest)
        self.size += len(rest)

    def rotate(self) -> None:
        """Keep the live file as ``.1`` (dropping the older one) and write a fresh one."""
        try:
            os.replace(self.path, previous(self.path))
            fresh = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError:
            # The folder went away or is read-only: go on writing where we write (never stop).
            self.size = 0
            return
        with contextlib.suppress(OSError):
            os.dup2(fresh, self.fd, inheritable=False)
        os.close(fresh)
        self.size = 0
