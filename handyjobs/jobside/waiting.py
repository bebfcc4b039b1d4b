"""A queued run's wait on this machine: until the scheduling pass grants it, or it leaves.

One queued runner at a time holds the scheduler lock and runs the pass for everyone (GPUs
looked at through one NVML session); the others only read their own record.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from handyjobs.core import lifecycle, paths, registry, scheduler
from handyjobs.core.records import JobState
from handyjobs.errors import HandyjobsError
from handyjobs.gpus.discovery import Watch
from handyjobs.jobside.statusfile import say
from handyjobs.views import render

#: Seconds between two looks at the run's record while it is queued.
QUEUE_POLL_S = 0.25
#: Seconds between two scheduling passes by the queued runner that schedules.
SCHEDULE_EVERY_S = 1.0


def wait_for_grant(
    root: Path, name: str, run_id: str, env: dict[str, str], log_fd: int
) -> tuple[int, ...] | None:
    """Wait in the queue until granted (its GPUs), or None when the run left the queue.

    While waiting, the runner that holds the scheduler lock runs the scheduling pass for
    everyone once a second; the others only look at their own record.
    """
    said = None
    failed = ""
    sched_fd = -1
    next_pass = 0.0
    looking: Watch | None = None  # one NVML session while this runner schedules
    try:
        while True:
            record = registry.load_one(name, root)
            run = None if record is None else record.run_by_id(run_id)
            if run is None or not run.state.active:
                return None
            if run.stop_requested:
                with registry.locked(root) as reg:
                    lifecycle.cancel(reg, name, run_id)
                return None
            if run.state is JobState.RUNNING:
                return run.gpus
            if run.wait is not None and run.wait != said:
                say(log_fd, f"queued: {render.wait_text(run.wait)}")
                said = run.wait
            if sched_fd < 0:
                sched_fd = _try_lock(paths.scheduler_lock_path(root))
            if sched_fd >= 0 and time.monotonic() >= next_pass:
                try:
                    if looking is None:
                        from handyjobs.gpus import (
                            discovery as gpus,  # lazy: only this path needs it (start-up)
                        )

                        looking = gpus.Watch(env)
                    scheduler.schedule_pass(root, env, looking)
                except HandyjobsError as exc:
                    # A GPU that cannot be read (or a full disk) must not end the wait:
                    # say so once, and try again at the next pass.
                    if str(exc) != failed:
                        say(log_fd, f"cannot schedule yet: {exc}")
                        failed = str(exc)
                next_pass = time.monotonic() + SCHEDULE_EVERY_S
            time.sleep(QUEUE_POLL_S)
    finally:
        if looking is not None:
            looking.close()
        if sched_fd >= 0:
            os.close(sched_fd)


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
