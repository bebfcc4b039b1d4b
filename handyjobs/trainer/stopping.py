"""Stop signals become ``trainer.should_stop``: checkpoint and leave instead of being killed.

``handyjobs stop`` sends SIGTERM to every process of the job (torchrun's agent and each
worker), waits a grace period (10 s by default), then sends SIGKILL; a cluster's scheduler
sends SIGUSR1 some time before a time limit when asked to (``--signal-before``). The rules,
chosen so that a script that never asks keeps dying promptly:

* A stop signal is swallowed only once the script has *read* the flag (``should_stop`` or
  ``stop_requested``) at least once. Before that, it takes its default action: SIGTERM ends
  the process at once, exactly as without a trainer.
* Once armed, the first signal sets the flag and prints one line on stderr. The same signal
  again within ``REPEAT_WINDOW_S`` counts as the same request: torchrun's agent forwards the
  SIGTERM it got to every worker, which ``handyjobs stop`` has signalled directly as well.
  A repeat after that window takes the default action, so a second ``kill`` still kills.
* Signals that already have a handler of the script's own (or SIG_IGN) are left alone.
* DataLoader workers of the trainer's loaders ignore a stop signal and its repeats within
  the window (their parent shuts them down when it leaves), so a stop that reaches them,
  directly or through torchrun's signal to each worker's process group, does not crash it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from handyjobs.trainer.errors import TrainerError, TrainerWarning

#: What ``config.stop_signals`` defaults to: ``handyjobs stop`` and a scheduler's warning.
DEFAULT_STOP_SIGNALS = ("SIGTERM", "SIGUSR1")

#: Seconds within which a repeat of the same signal is the same stop request (see above).
REPEAT_WINDOW_S = 5.0

_UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}
_DEFAULTS = (signal.SIG_DFL, signal.default_int_handler)

#: Set by a backend's node wrapper to the signals it made torchrun ignore (``"SIGUSR1"``) so
#: that torchrun survives a scheduler's warning; workers inherit SIG_IGN, which is then not
#: the script's.
IGNORED_FOR_TORCHRUN_ENV = "HANDYJOBS_IGNORED_FOR_TORCHRUN"

#: Set by a backend whose scheduler may run the job again (a requeue after the time-limit
#: warning): the file where the trainer notes that its loop left early at a stop request.
#: A clean exit then means "not done" (requeue it); one without the note means "done".
STOPPED_FILE_ENV = "HANDYJOBS_STOPPED_FILE"


def note_stopped_early(why: str | None) -> None:
    """Note, where the job side looks, that the loop leaves early (``should_stop`` turned
    True); best effort: a note that cannot be written leaves the run to end as done."""
    path = os.environ.get(STOPPED_FILE_ENV)
    if not path:
        return
    with contextlib.suppress(OSError), open(path, "a") as f:
        f.write(f"{why or 'stop requested'}\n")


def _ours_to_take(sig: int, current: Handler) -> bool:
    """True when the trainer may handle ``sig``: no handler of the script's own is there."""
    if current in _DEFAULTS:
        return True
    if current is signal.SIG_IGN:
        names = os.environ.get(IGNORED_FOR_TORCHRUN_ENV, "").split(",")
        return signal.Signals(sig).name in names
    return False


Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def parse_signals(value: Any) -> tuple[signal.Signals, ...]:
    """``config.stop_signals`` as signals: None is the default; names, numbers, a list or a string.

    ``"SIGTERM,SIGUSR1"``, ``["TERM", "USR2"]`` and ``[15]`` all work; ``[]``, ``False``,
    ``""`` and ``"none"`` turn stop handling off.
    """
    if value is None:
        items: list[Any] = list(DEFAULT_STOP_SIGNALS)
    elif value is False:
        items = []
    elif isinstance(value, str):
        items = [] if value.strip().lower() in ("", "none", "off") else re.split(r"[,\s]+", value)
    elif isinstance(value, int):
        items = [value]
    else:
        items = list(value)
    found: list[signal.Signals] = []
    for item in items:
        if item in ("", None):
            continue
        sig = _one_signal(item)
        if sig not in found:
            found.append(sig)
    return tuple(found)


def _one_signal(item: Any) -> signal.Signals:
    """One signal from a name (``SIGTERM``, ``term``) or a number."""
    try:
        if isinstance(item, str) and not item.strip().isdigit():
            name = item.strip().upper()
            sig = signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
        else:
            sig = signal.Signals(int(item))
    except (KeyError, ValueError, TypeError):
        raise TrainerError(
            f"config.stop_signals: {item!r} is not a signal; use names such as "
            "'SIGTERM' and 'SIGUSR1', or [] to handle none"
        ) from None
    if sig in _UNCATCHABLE:
        raise TrainerError(f"config.stop_signals: {sig.name} cannot be caught; leave it out")
    return sig


class StopListener:
    """The process-wide stop flag and the signal handlers that set it (one per process)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """An idle listener: no handlers until ``acquire``."""
        self.clock = clock
        self.requested: str | None = None
        self.armed = False
        self.label = ""
        self._first: dict[int, float] = {}
        self._previous: dict[int, Handler] = {}
        self._users = 0

    @property
    def signals(self) -> tuple[int, ...]:
        """The signals this listener handles now."""
        return tuple(self._previous)

    def acquire(self, signals: Iterable[signal.Signals], label: str = "") -> None:
        """Handle ``signals`` (from the main thread; elsewhere Python cannot), for one more user."""
        if self._users == 0:
            self.requested, self.armed, self._first = None, False, {}
        self._users += 1
        self.label = label
        wanted = [sig for sig in signals if sig not in self._previous]
        if not wanted:
            return
        if threading.current_thread() is not threading.main_thread():
            warnings.warn(
                "the trainer was created outside the main thread, where Python cannot set "
                "signal handlers: should_stop will not see SIGTERM or SIGUSR1",
                TrainerWarning,
                stacklevel=4,
            )
            return
        for sig in wanted:
            current = signal.getsignal(sig)
            if not _ours_to_take(sig, current):
                continue  # the script's own handler (or its SIG_IGN) wins
            self._previous[sig] = current
            signal.signal(sig, self._handle)

    def release(self) -> None:
        """One user fewer; the last one puts the previous handlers back, unless stopping.

        While a stop is under way the handlers stay: the script saved and is leaving, and the
        copy of the signal that torchrun forwards may arrive only now; it must not kill the
        process on its way out (a worker killed there counts as failed).
        """
        self._users = max(self._users - 1, 0)
        if self._users == 0 and self.requested is None:
            self.uninstall()

    def uninstall(self) -> None:
        """Put the previous handlers back now and forget any request."""
        if threading.current_thread() is threading.main_thread():
            for sig, previous in self._previous.items():
                if signal.getsignal(sig) == self._handle:
                    signal.signal(sig, previous)
        self._previous = {}
        self._users = 0
        self.requested, self.armed, self._first = None, False, {}

    def read(self) -> bool:
        """Whether a stop was asked for; reading arms the handlers (see the module docstring)."""
        self.armed = True
        return self.requested is not None

    def request(self, reason: str = "request_stop()") -> None:
        """Ask for a stop from code (a time budget, a diverged loss) as a signal would."""
        if self.requested is None:
            self.requested = reason

    def swallow(self, signum: int, now: float) -> bool:
        """Whether a signal arriving at ``now`` is a stop request (True) or takes its default."""
        if not self.armed:
            return False
        first = self._first.get(signum)
        if first is None:
            self._first[signum] = now
            return True
        return now - first <= REPEAT_WINDOW_S

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: set the flag, or act as if no trainer were there."""
        # A scheduler's warning (ignored for torchrun's sake) is a request even before the loop
        # reads the flag, and never fatal: the runner sends it once, and a worker under the
        # rank wrapper starts with its default, not SIG_IGN (a resumed run loading its state).
        ignored = os.environ.get(IGNORED_FOR_TORCHRUN_ENV, "").split(",")
        warning = signal.Signals(signum).name in ignored
        if warning or self.swallow(signum, self.clock()):
            if self.requested is None:
                self.requested = signal.Signals(signum).name
                # os.write, not print: the handler may interrupt a print on the same stream.
                os.write(
                    2,
                    f"handyjobs: {self.label}got {self.requested}; trainer.should_stop is now "
                    "True (the loop can save and return)\n".encode(),
                )
            return
        previous = self._previous.get(signum, signal.SIG_DFL)
        if previous is signal.SIG_IGN:
            # Ignored before the trainer came (SIGUSR1 under a scheduler, for torchrun's sake): a
            # warning that comes too early or again is dropped, never fatal.
            return
        if callable(previous):
            previous(signum, frame)  # Python's SIGINT default: KeyboardInterrupt
            return
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


#: The one listener of this process (signal handlers are per process, not per trainer).
listener = StopListener()


class IgnoreFirstStop:
    """A DataLoader ``worker_init_fn`` that lets workers outlive a stop request.

    DataLoader workers get the stop signal too: ``handyjobs stop`` signals every process of
    the job, and torchrun's agent sends its own to each worker's whole process group, which
    holds the DataLoader workers. A worker killed by it makes the main process raise
    "DataLoader worker ... is killed by signal" instead of finishing its step and saving.
    So a worker ignores the first signal and its repeats within ``REPEAT_WINDOW_S``, as the
    main process does; it exits on its own once the main process is done with it (or gone).
    """

    def __init__(self, signals: tuple[int, ...], then: Callable[[int], Any] | None) -> None:
        """Handle ``signals`` in each worker, then call the user's own ``worker_init_fn``."""
        self.signals = signals
        self.then = then

    def __call__(self, worker_id: int) -> None:
        """Runs first thing in each worker process."""
        for sig in self.signals:
            signal.signal(sig, _in_worker)
        if self.then is not None:
            self.then(worker_id)


_worker_first: dict[int, float] = {}


def _in_worker(signum: int, frame: FrameType | None) -> None:
    """In a DataLoader worker: ignore a stop signal and its repeats for a while, then die."""
    now = time.monotonic()
    first = _worker_first.setdefault(signum, now)
    if now - first > REPEAT_WINDOW_S:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)
