"""The runner's half of a job's limits on this machine: the time limit, its warning, memory.

``start`` checked them (:mod:`handyjobs.core.limits`); here they are enforced:

- ``--mem``: the run's cgroup gets the limit before the job joins it, so the kernel counts
  everything the job starts. A job whose processes the kernel killed for going over it ends
  ``failed`` with the reason "out of memory" (the cgroup counts those kills).
- ``--time``: a thread of the runner's counts the time the job runs (time paused by
  ``handyjobs pause`` does not count, as a scheduler does not count a suspended job's).
  ``--signal-before`` seconds before the limit, every process of the run that handles SIGUSR1
  gets it, as a scheduler warns a job (``trainer.should_stop`` listens for it). Only those
  that handle it: SIGUSR1 kills a process that does not (torchrun's agent, a script without a
  handler), and a rank wrapper would pass it on to a worker that does not. Processes that
  start handling it later, before the limit, are warned then. At the limit the runner runs
  the stop sequence (SIGTERM to every process, SIGCONT, SIGKILL after a grace) and the run
  ends ``failed`` with the reason "time limit", whatever its exit code (a job that saved and
  exited 0 included).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path

from handyjobs import procfs
from handyjobs.core import cgroups, limits, procs
from handyjobs.core.options import STOP_GRACE_S
from handyjobs.core.records import JobSpec, LostKind, Reason, utcnow

#: The warning before the time limit: what a scheduler sends and ``should_stop`` listens for.
WARNING_SIGNAL = signal.SIGUSR1
#: Seconds between SIGTERM and SIGKILL at the time limit: ``stop``'s default grace.
GRACE_S = STOP_GRACE_S
#: How often the watch looks at the clock and for processes newly listening for the warning.
TICK_S = 0.2


def handles(pid: int, sig: int) -> bool:
    """True when the process has a handler of its own for ``sig`` (``SigCgt`` in its status)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


class Watch:
    """One run's limits in the runner: its cgroup's memory limit, and the time-limit thread."""

    def __init__(self, run_id: str, spec: JobSpec) -> None:
        """Nothing happens until :meth:`make_group` and :meth:`start`."""
        self.run_id, self.spec = run_id, spec
        self.group = cgroups.RunGroup(run_id)
        #: Lines for the log once the job ended (a thread must not write into a job's line).
        self.notes: list[str] = []
        #: True once the time limit was reached and the stop sequence began.
        self.hit = False
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def make_group(self) -> cgroups.RunGroup:
        """The run's cgroup, with the memory limit when one was asked (a usage error when it
        can no longer be had: never a run without the limit it asked for)."""
        self.group = cgroups.create(self.run_id, self.spec.mem_limit)
        return self.group

    def start(self, main: int) -> None:
        """The job started (``main`` is its first process): count its time from now."""
        if self.spec.time_limit is not None:
            self._thread = threading.Thread(target=self._watch, args=(main,), daemon=True)
            self._thread.start()

    def _watch(self, main: int) -> None:
        limit = self.spec.time_limit
        assert limit is not None
        warn_at = limit - limits.warning_lead(limit, self.spec.signal_before)
        used, last = 0.0, time.monotonic()
        warned: set[int] = set()
        while not self._done.wait(TICK_S):
            now = time.monotonic()
            if procfs.state(main) != b"T":  # paused: that time does not count
                used += now - last
            last = now
            if used >= warn_at:
                self._warn(warned)
            if used >= limit:
                self.hit = True
                self.notes.append(
                    f"time limit of {limit} s reached {utcnow()}: ending the job (SIGTERM, "
                    f"SIGKILL after {GRACE_S:.0f} s)"
                )
                procs.terminate(self.run_id, grace_s=GRACE_S)
                return

    def _warn(self, warned: set[int]) -> None:
        """Send the warning to each process of the run that handles it and has not had it."""
        sent = 0
        for pid, start in procs.members(self.run_id).items():
            if pid in warned or not handles(pid, WARNING_SIGNAL) or procs.is_rank_wrapper(pid):
                continue
            if procs.signal_verified(pid, start, self.run_id, WARNING_SIGNAL):
                warned.add(pid)
                sent += 1
        if sent:
            self.notes.append(
                f"time-limit warning ({WARNING_SIGNAL.name}) sent {utcnow()} to {sent} "
                f"process{'es' if sent > 1 else ''} that handle it"
            )

    def end(self, exit_code: int | None, signum: int | None) -> Reason | None:
        """The job ended: stop watching; the limit that ended it, if one did.

        Called before the run's cgroup is removed: its count of the kernel's kills is read here.
        """
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        if self.hit:
            return Reason(LostKind.TIME_LIMIT, detail=str(self.spec.time_limit))
        failed = exit_code != 0 or signum is not None
        oom = 0
        with contextlib.suppress(OSError, ValueError):
            oom = self.group.oom_killed() if self.spec.mem_limit is not None else 0
        if failed and oom:
            self.notes.append(f"the kernel killed {oom} process(es) over the --mem limit")
            return Reason(LostKind.OUT_OF_MEMORY, detail=str(self.spec.mem_limit))
        return None
