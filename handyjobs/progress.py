"""Progress for loops: a rich bar on a terminal, plain lines in logs, a JSON file for live views.

No torch here (the CLI may import this module).

* On a terminal, a rich bar. Under handyjobs (``HANDYJOBS_JOB`` is set) a job always runs on a
  pseudo-terminal whose every byte is also written to the job's log, so the bar is redrawn from
  the loop at most once a second (``MAX_REDRAWS_PER_S``) instead of by rich's timer ten times
  a second, which measured 21 KB of log for a 10 s bar. Outside handyjobs rich is left alone.
* Elsewhere (a pipe, a file), a plain line at each quarter of the way or every ``interval``
  seconds, and a final one.
* When ``HANDYJOBS_PROGRESS_FILE`` is set, a small JSON document is written there (temp file
  and rename, mode 0600) when the loop starts, at most once a second while it runs, and once
  when it ends::

      {"desc": "epoch 3/10", "done": 120, "total": 500, "rate_per_s": 41.7, "eta_s": 9.1,
       "elapsed_s": 2.88, "updated_at": "2025-03-01T12:00:00.123Z", "rank": 0}

  ``total`` and ``eta_s`` are null when the length is unknown. Failing to write it (a full
  disk, a removed folder) warns once and never stops the loop.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from typing import Any, TypeVar

    T = TypeVar("T")

#: Redraws a second of the rich bar under handyjobs.
MAX_REDRAWS_PER_S = 1.0
#: Cells of the bar under handyjobs (rich's default is 40).
LOGGED_BAR_WIDTH = 20
#: Seconds between two writes of the progress file.
FILE_INTERVAL_S = 1.0

PROGRESS_FILE_ENV = "HANDYJOBS_PROGRESS_FILE"

Clock = Callable[[], float]


def under_handyjobs(env: Mapping[str, str]) -> bool:
    """True inside a job that handyjobs started (it sets ``HANDYJOBS_JOB``)."""
    return bool(env.get("HANDYJOBS_JOB"))


def redraw_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between bar redraws driven by the loop, or None to leave rich's timer on."""
    return 1.0 / MAX_REDRAWS_PER_S if under_handyjobs(env) else None


def utc_now() -> str:
    """Now as ISO-8601 UTC with milliseconds, as handyjobs' records write it."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ProgressFile:
    """The loop's state for live views, replaced atomically, at most once per interval."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        desc: str,
        total: int | None,
        clock: Clock = time.monotonic,
        now: Callable[[], str] = utc_now,
        interval: float = FILE_INTERVAL_S,
        rank: int = 0,
    ) -> None:
        """Nothing is written until ``start``."""
        self.path = Path(path)
        self.desc = desc
        self.total = total
        self.clock = clock
        self.now = now
        self.interval = interval
        self.rank = rank
        self.writes = 0
        self._start = clock()
        self._last: float | None = None
        self._broken = False

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], desc: str, total: int | None, clock: Clock
    ) -> ProgressFile | None:
        """The file ``HANDYJOBS_PROGRESS_FILE`` names, or None when it is not set."""
        path = env.get(PROGRESS_FILE_ENV, "").strip()
        return cls(path, desc, total, clock) if path else None

    def document(self, done: int) -> dict[str, Any]:
        """What the file holds after ``done`` items."""
        elapsed = max(self.clock() - self._start, 0.0)
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = None
        if self.total is not None and rate > 0:
            eta = round(max(self.total - done, 0) / rate, 3)
        return {
            "desc": self.desc,
            "done": done,
            "total": self.total,
            "rate_per_s": round(rate, 3),
            "eta_s": eta,
            "elapsed_s": round(elapsed, 3),
            "updated_at": self.now(),
            "rank": self.rank,
        }

    def start(self) -> None:
        """Report the loop's beginning."""
        self._start = self.clock()
        self._write(0)

    def update(self, done: int) -> None:
        """Report ``done`` if a write interval has passed since the last write."""
        if self._last is None or self.clock() - self._last >= self.interval:
            self._write(done)

    def finish(self, done: int) -> None:
        """Report the final count, whatever the interval."""
        self._write(done)

    def _write(self, done: int) -> None:
        """Replace the file: a temp file in the same folder, then a rename (readers see whole)."""
        if self._broken:
            return
        self._last = self.clock()
        text = json.dumps(self.document(done), ensure_ascii=False)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(text + "\n")
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            self._broken = True
            warnings.warn(
                f"cannot write progress to {self.path} ({exc}); training goes on without it",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        self.writes += 1


def track(
    iterable: Iterable[T],
    desc: str = "",
    total: int | None = None,
    interval: float = 30.0,
    *,
    tty: bool | None = None,
    env: Mapping[str, str] | None = None,
    clock: Clock = time.monotonic,
    console: Any = None,
) -> Iterator[T]:
    """Iterate with a bar on a TTY or plain lines otherwise, and the progress file when asked."""
    env = os.environ if env is None else env
    if total is None and hasattr(iterable, "__len__"):
        with contextlib.suppress(TypeError):
            total = len(iterable)  # type: ignore[arg-type]
    report = ProgressFile.from_env(env, desc, total, clock)
    if tty is None:
        tty = sys.stdout.isatty()
    if tty:
        return rich_progress(
            iterable,
            desc,
            total,
            redraw_every=redraw_interval(env),
            clock=clock,
            console=console,
            report=report,
        )
    return plain_progress(iterable, desc, total, interval, clock=clock, report=report)


def rich_progress(
    iterable: Iterable[T],
    desc: str,
    total: int | None,
    *,
    redraw_every: float | None = None,
    clock: Clock = time.monotonic,
    console: Any = None,
    report: ProgressFile | None = None,
) -> Iterator[T]:
    """A rich bar around ``iterable``; ``redraw_every``: the loop redraws it, at most that often.

    rich is imported only when a bar is shown.
    """
    from rich.progress import (  # lazy: rich only when a bar is shown (start-up of every job)
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )  # lazy: rich only for a bar on a terminal (start-up of every job)

    throttled = redraw_every is not None
    columns = (
        TextColumn("{task.description}"),
        # Every frame goes to the job's log: a shorter bar (3 bytes a cell) keeps it small.
        BarColumn(bar_width=LOGGED_BAR_WIDTH if throttled else 40),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    done = 0
    bar = Progress(*columns, console=console, auto_refresh=not throttled, get_time=clock)
    # Added before the bar starts, so adding it draws no frame of its own.
    task = bar.add_task(desc or "progress", total=total)
    try:
        with bar:
            if report is not None:
                report.start()
            last_redraw = clock()
            for item in iterable:
                yield item
                done += 1
                bar.advance(task)
                if redraw_every is not None:
                    now = clock()
                    if now - last_redraw >= redraw_every:
                        bar.refresh()
                        last_redraw = now
                if report is not None:
                    report.update(done)
    finally:
        if report is not None:
            report.finish(done)


def plain_progress(
    iterable: Iterable[T],
    desc: str,
    total: int | None,
    interval: float,
    *,
    clock: Clock = time.monotonic,
    report: ProgressFile | None = None,
) -> Iterator[T]:
    """Plain lines for logs: at each quarter of the way (or every ``interval`` s) and at the end."""
    label = f"{desc}: " if desc else ""
    start = last = clock()
    next_quarter = 1
    done = shown = 0
    if report is not None:
        report.start()
    try:
        for item in iterable:
            yield item
            done += 1
            now = clock()
            crossed = bool(total) and done * 4 >= next_quarter * (total or 1)
            if crossed or now - last >= interval:
                while total and done * 4 >= next_quarter * total:
                    next_quarter += 1
                last, shown = now, done
                builtins.print(progress_line(label, done, total, now - start), flush=True)
            if report is not None:
                report.update(done)
    finally:
        if report is not None:
            report.finish(done)
    if shown != done or done == 0:
        builtins.print(progress_line(label, done, total, clock() - start), flush=True)


def progress_line(label: str, done: int, total: int | None, elapsed: float) -> str:
    """One progress line: count, percentage, elapsed time and rate."""
    rate = done / elapsed if elapsed > 0 else 0.0
    if total:
        return f"{label}{done}/{total} ({100 * done // total}%) {elapsed:.1f}s {rate:.1f} it/s"
    return f"{label}{done} {elapsed:.1f}s {rate:.1f} it/s"
