"""``handyjobs top``: a full-screen view that redraws about once a second, with a few keys.

Each refresh takes one :meth:`~handyjobs.views.observe.Watcher.snapshot` (one pass over /proc,
the latest GPU look, records reconciled in memory: no registry write). Keys: ``q`` quits,
arrows (or ``j``/``k``) select a job, ``f`` or Enter follows its log until it ends (or
Ctrl-C) and comes back, ``s`` stops it after a ``y``. Without a terminal it prints one frame.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import threading
import time
import tty

from handyjobs.core import control
from handyjobs.errors import HandyjobsError
from handyjobs.views import observe

_UP = (b"\x1b[A", b"\x1bOA", b"k")
_DOWN = (b"\x1b[B", b"\x1bOB", b"j")


#: The width ``top --once`` draws at for a file or a pipe: wide enough for any row.
UNFIT_WIDTH = 10_000


def run_top(interval_s: float = 1.0, once: bool = False) -> int:
    """Show the live view until ``q``; with ``once`` (or no terminal), one frame."""
    from handyjobs.views import (
        charts as views,  # lazy: rich.live only once the screen is drawn (start-up)
    )

    watcher = observe.Watcher(interval_s=interval_s)
    try:
        if once or not (sys.stdin.isatty() and sys.stdout.isatty()):
            watcher.snapshot()
            time.sleep(min(interval_s, 1.0))  # CPU use needs two looks
            # A file or a pipe has no width to fit: it gets every column whole.
            fit = sys.stdout.isatty()
            screen = views.top_screen(watcher.snapshot(), -1, fit=fit)
            if fit:
                views.console().print(screen)
                return 0
            out = views.console(UNFIT_WIDTH)
            with out.capture() as drawn:
                out.print(screen)
            sys.stdout.write("".join(line.rstrip() + "\n" for line in drawn.get().splitlines()))
            return 0
        return _Screen(watcher, interval_s).run()
    finally:
        watcher.close()


class _Screen:
    """The interactive loop: refresh, keys, and the stop asked from it."""

    def __init__(self, watcher: observe.Watcher, interval_s: float) -> None:
        """Nothing selected, nothing said yet."""
        self.watcher, self.interval_s = watcher, interval_s
        self.selected = 0
        self.message = ""
        self.confirm: str | None = None  # a job waiting for "y" to be stopped
        self.fd = sys.stdin.fileno()
        self.keys: list[bytes] = []

    def run(self) -> int:
        """The screen until ``q``, with the terminal's settings put back whatever happens."""
        saved = termios.tcgetattr(self.fd)
        try:
            while True:
                follow = self._show()
                if follow is None:
                    return 0
                termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)
                self._follow(follow)
        except KeyboardInterrupt:
            return 0
        finally:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)

    def _show(self) -> str | None:
        """The screen until ``q`` (None) or a job to follow (its name)."""
        from rich.live import Live  # lazy: rich.live only once the screen is drawn (start-up)

        from handyjobs.views import (
            charts as views,  # lazy: rich.live only once the screen is drawn (start-up)
        )

        tty.setcbreak(self.fd)  # keys one at a time, unechoed; Ctrl-C still interrupts
        with Live(console=views.console(), screen=True, auto_refresh=False) as live:
            snap = self.watcher.snapshot()
            next_look = time.monotonic() + self.interval_s
            while True:
                if snap.jobs:
                    self.selected = min(max(self.selected, 0), len(snap.jobs) - 1)
                live.update(views.top_screen(snap, self.selected, self.message), refresh=True)
                key = _read_key(self.fd, max(0.0, next_look - time.monotonic()), self.keys)
                if not key:
                    snap = self.watcher.snapshot()
                    next_look = time.monotonic() + self.interval_s
                    continue
                chosen = snap.jobs[self.selected].record.name if snap.jobs else None
                if self.confirm is not None:
                    name, self.confirm = self.confirm, None
                    self.message = ""
                    if key.lower() == b"y":
                        self._stop(name)
                    continue
                if key in (b"q", b"Q"):
                    return None
                if key in _UP:
                    self.selected -= 1
                elif key in _DOWN:
                    self.selected += 1
                elif key in (b"f", b"\r", b"\n") and chosen:
                    return chosen
                elif key == b"s" and chosen:
                    self.confirm = chosen
                    self.message = f"stop {chosen}? y/n"

    def _follow(self, name: str) -> None:
        """The job's log until it ends (or Ctrl-C), then a key to come back to the screen."""
        from handyjobs.views import (
            charts as views,  # lazy: rich.live only once the screen is drawn (start-up)
        )
        from handyjobs.views.logview import (
            show_log,  # lazy: rich.live only once the screen is drawn (start-up)
        )

        try:
            show_log(name, 20, True)
        except KeyboardInterrupt:
            return
        except HandyjobsError as exc:
            print(exc)
        sys.stdout.write(views.followed_message(name))
        sys.stdout.flush()
        tty.setcbreak(self.fd)
        with contextlib.suppress(KeyboardInterrupt):
            _read_key(self.fd, None, [])

    def _stop(self, name: str) -> None:
        from handyjobs.views import (
            charts as views,  # lazy: rich.live only once the screen is drawn (start-up)
        )

        self.message = f"stopping {name}..."

        def stop() -> None:
            try:
                result = control.stop_job(name)
            except HandyjobsError as exc:
                self.message = views.stop_message(name, (), str(exc))
                return
            self.message = views.stop_message(name, result.pids, None)

        threading.Thread(target=stop, name="handyjobs-stop", daemon=True).start()


def _read_key(fd: int, timeout: float | None, queue: list[bytes]) -> bytes:
    """One key press (an escape sequence whole), or b"" when none came in ``timeout``.

    Keys typed (or pasted) faster than the screen redraws arrive in one read: the extra
    ones wait in ``queue``.
    """
    if not queue:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return b""
        try:
            data = os.read(fd, 64)
        except OSError:
            data = b""
        if not data:
            return b"q"  # the terminal went away
        queue.extend(_split_keys(data))
    return queue.pop(0)


def _split_keys(data: bytes) -> list[bytes]:
    """Bytes read from a terminal as key presses: ``ESC [ A`` is one key, ``jk`` two."""
    keys, pos = [], 0
    while pos < len(data):
        if data[pos : pos + 1] == b"\x1b" and data[pos + 1 : pos + 2] in (b"[", b"O"):
            end = pos + 2
            while end < len(data) and not 0x40 <= data[end] <= 0x7E:
                end += 1
            keys.append(data[pos : end + 1])
            pos = end + 1
        else:
            keys.append(data[pos : pos + 1])
            pos += 1
    return keys
