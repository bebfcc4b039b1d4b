"""Progress for loops: a rich bar on a terminal, plain periodic lines in logs (no torch here)."""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def rich_progress(iterable: Iterable[T], desc: str, total: int | None) -> Iterator[T]:
    """A rich progress bar around ``iterable`` (rich is imported only when one is shown)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as bar:
        task = bar.add_task(desc or "progress", total=total)
        for item in iterable:
            yield item
            bar.advance(task)


def plain_progress(
    iterable: Iterable[T], desc: str, total: int | None, interval: float
) -> Iterator[T]:
    """Plain lines for logs: at each quarter of the way (or every ``interval`` s) and at the end."""
    label = f"{desc}: " if desc else ""
    start = last = time.monotonic()
    next_quarter = 1
    done = shown = 0
    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        crossed = bool(total) and done * 4 >= next_quarter * (total or 1)
        if crossed or now - last >= interval:
            while total and done * 4 >= next_quarter * total:
                next_quarter += 1
            last, shown = now, done
            builtins.print(progress_line(label, done, total, now - start), flush=True)
    if shown != done or done == 0:
        builtins.print(progress_line(label, done, total, time.monotonic() - start), flush=True)


def progress_line(label: str, done: int, total: int | None, elapsed: float) -> str:
    """One progress line: count, percentage, elapsed time and rate."""
    rate = done / elapsed if elapsed > 0 else 0.0
    if total:
        return f"{label}{done}/{total} ({100 * done // total}%) {elapsed:.1f}s {rate:.1f} it/s"
    return f"{label}{done} {elapsed:.1f}s {rate:.1f} it/s"
