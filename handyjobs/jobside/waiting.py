"""A queued run's wait on this machine: until the scheduling pass grants it, or it leaves.

One queued runner at a time holds the scheduler lock and runs the pass for everyone (GPUs
looked at through one NVML session); the others sleep until a byte in their run's wake FIFO
says their run changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import time
from pathlib import Path

from handyjobs.core import lifecycle, paths, registry, scheduler
from handyjobs.core.records import JobState, Wait
from handyjobs.errors import HandyjobsError
from handyjobs.gpus.discovery import Watch
from handyjobs.jobside.statusfile import say
from handyjobs.views import render

#: Seconds between two looks where no wake FIFO can be made.
QUEUE_POLL_S = 0.25
#: Seconds between two scheduling passes by the queued runner that schedules.
SCHEDULE_EVERY_S = 1.0
#: Seconds after which a sleeping runner reads its record even if it was not woken.
RECHECK_S = 30.0
#: Seconds between a sleeping runner's tries to take the scheduler lock over.
LOCK_EVERY_S = 2.0


def wait_for_grant(
    root: Path, name: str, run_id: str, env: dict[str, str], log_fd: int
) -> tuple[int, ...] | None:
    """Wait in the queue until granted (its GPUs), or None when the run left the queue.

    While waiting, the runner that holds the scheduler lock runs the scheduling pass for
    everyone once a second and reads its own record after each pass. The others sleep on their
    run's wake FIFO, into which every change of their run writes a byte, and read the registry
    only when woken (or every :data:`RECHECK_S` anyway), so waiting costs next to nothing
    whatever the queue's length.
    """
    waiter = _Waiter(root, name, run_id, env, log_fd)
    try:
        while True:
            if waiter.due():
                done, gpus = waiter.look()
                if done:
                    return gpus
            waiter.schedule()
            waiter.sleep()
    finally:
        waiter.close()


class _Waiter:
    """One queued run's wait: when to look at its record, and the pass while it holds the lock."""

    def __init__(self, root: Path, name: str, run_id: str, env: dict[str, str], log_fd: int):
        self.root, self.name, self.run_id, self.env, self.log_fd = root, name, run_id, env, log_fd
        self.wake_fds = _open_wake(paths.wake_path(name, run_id, root))
        self.woken = True  # look at once
        self.next_look = 0.0
        self.next_pass = 0.0
        self.sched_fd = -1
        self.said: Wait | None = None
        self.failed = ""
        self.looking: Watch | None = None  # one NVML session while this runner schedules

    def due(self) -> bool:
        """True when the record is to be read: the run was woken, or it is time anyway."""
        woken, self.woken = self.woken, False
        return woken or time.monotonic() >= self.next_look

    def sleep(self) -> None:
        """Until woken (a byte in the wake FIFO), or until it is time to try the lock or look.

        The runner that schedules wakes for its next pass; the others sleep
        :data:`LOCK_EVERY_S` at most, to take the scheduler lock over if its holder went.
        """
        if self.sched_fd >= 0:
            timeout = max(0.0, min(self.next_pass, self.next_look) - time.monotonic())
        else:
            timeout = LOCK_EVERY_S
        if not self.wake_fds:  # no FIFO could be made: poll as before
            time.sleep(min(timeout, QUEUE_POLL_S))
            self.woken = True
            return
        ready, _, _ = select.select([self.wake_fds[0]], [], [], timeout)
        if ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self.wake_fds[0], 4096):
                    pass
            self.woken = True

    def look(self) -> tuple[bool, tuple[int, ...] | None]:
        """Read the run's record: (True, its GPUs) once granted, (True, None) once it left."""
        self.next_look = time.monotonic() + RECHECK_S
        # Shared: a wake is written under the writer's lock, before its save; reading now
        # without the lock could see the record as it was and sleep through the change.
        with registry.shared(self.root):
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
        for fd in self.wake_fds:
            os.close(fd)


def _open_wake(path: Path) -> tuple[int, ...]:
    """The run's wake FIFO opened for reading (and held open for writing too, so that it never
    reads as ended between two wakers); () when it cannot be made."""
    try:
        with contextlib.suppress(FileExistsError):
            os.mkfifo(path, 0o600)
        read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return ()
    try:
        write_fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        os.close(read_fd)
        return ()
    return read_fd, write_fd


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
