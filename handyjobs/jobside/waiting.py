"""A queued run's wait on this machine: until the scheduling pass grants it, or it leaves.

One queued runner at a time holds the scheduler lock and runs the pass for everyone (GPUs
looked at through one NVML session); the others sleep until their run's wake file is touched.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from handyjobs.core import lifecycle, paths, registry, scheduler
from handyjobs.core.records import JobState, Wait
from handyjobs.errors import HandyjobsError
from handyjobs.gpus.discovery import Watch
from handyjobs.jobside.statusfile import say
from handyjobs.views import render

#: Seconds between two looks at the run's record while it is queued.
QUEUE_POLL_S = 0.25
#: Seconds between two scheduling passes by the queued runner that schedules.
SCHEDULE_EVERY_S = 1.0
#: Seconds after which a sleeping runner reads its record even if it was not woken.
RECHECK_S = 30.0


def wait_for_grant(
    root: Path, name: str, run_id: str, env: dict[str, str], log_fd: int
) -> tuple[int, ...] | None:
    """Wait in the queue until granted (its GPUs), or None when the run left the queue.

    While waiting, the runner that holds the scheduler lock runs the scheduling pass for
    everyone once a second and reads its own record after each pass. The others sleep: they
    look at their run's wake file (one ``stat``), which every change of their run touches,
    and read the registry only when it was touched (or every :data:`RECHECK_S` anyway), so
    the cost of waiting does not grow with the queue's length.
    """
    waiter = _Waiter(root, name, run_id, env, log_fd)
    try:
        while True:
            if waiter.due():
                done, gpus = waiter.look()
                if done:
                    return gpus
            waiter.schedule()
            time.sleep(QUEUE_POLL_S)
    finally:
        waiter.close()


class _Waiter:
    """One queued run's wait: when to look at its record, and the pass while it holds the lock."""

    def __init__(self, root: Path, name: str, run_id: str, env: dict[str, str], log_fd: int):
        self.root, self.name, self.run_id, self.env, self.log_fd = root, name, run_id, env, log_fd
        self.wake = paths.wake_path(name, run_id, root)
        self.seen: float | None = None
        self.next_look = 0.0  # look at once
        self.next_pass = 0.0
        self.sched_fd = -1
        self.said: Wait | None = None
        self.failed = ""
        self.looking: Watch | None = None  # one NVML session while this runner schedules

    def due(self) -> bool:
        """True when the record is to be read: the wake file changed, or it is time anyway."""
        try:
            stamp: float | None = self.wake.stat().st_mtime_ns
        except OSError:
            stamp = None
        if stamp != self.seen:
            self.seen = stamp
            return True
        return time.monotonic() >= self.next_look

    def look(self) -> tuple[bool, tuple[int, ...] | None]:
        """Read the run's record: (True, its GPUs) once granted, (True, None) once it left."""
        self.next_look = time.monotonic() + RECHECK_S
        record = registry.load_one(self.name, self.root)
        run = None if record is None else record.run_by_id(self.run_id)
        if run is None or not run.state.active:
            return True, None
        if run.stop_requested:
            with registry.locked(self.root) as reg:
                lifecycle.cancel(reg, self.name, self.run_id)
            return True, None
        if run.state is JobState.RUNNING:
            return True, run.gpus
        if run.wait is not None and run.wait != self.said:
            say(self.log_fd, f"queued: {render.wait_text(run.wait)}")
            self.said = run.wait
        return False, None

    def schedule(self) -> None:
        """Run the pass for everyone while this runner holds the scheduler lock."""
        if self.sched_fd < 0:
            self.sched_fd = _try_lock(paths.scheduler_lock_path(self.root))
        if self.sched_fd < 0 or time.monotonic() < self.next_pass:
            return
        try:
            if self.looking is None:
                self.looking = Watch(self.env)
            scheduler.schedule_pass(self.root, self.env, self.looking)
        except HandyjobsError as exc:
            # A GPU that cannot be read (or a full disk) must not end the wait: say so once,
            # and try again at the next pass.
            if str(exc) != self.failed:
                say(self.log_fd, f"cannot schedule yet: {exc}")
                self.failed = str(exc)
        self.next_pass = time.monotonic() + SCHEDULE_EVERY_S
        self.next_look = 0.0  # the pass may have granted this run too

    def close(self) -> None:
        """Let go of the NVML session and the scheduler lock."""
        if self.looking is not None:
            self.looking.close()
        if self.sched_fd >= 0:
            os.close(self.sched_fd)


def _try_lock(path: Path) -> int:
    """An fd holding an exclusive lock on ``path``, or -1 when someone else holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held by the queued runner that schedules now (or cannot be locked)
        os.close(fd)
        return -1
    return fd
