"""The job side: runs in the backend's session, starts the job on a TTY, tees every byte to
the log, records the outcome, and leaves no process of its run behind.

Invoked as ``python -m handyjobs.jobside.runner HOME NAME RUN_ID``. Its life:

1. Check, under the registry lock (shared), that its record exists with this run id: a
   ``start`` killed before saving leaves a session whose runner must start nothing.
2. Read the caller's environment from the job's 0600 file (never from a command line).
3. Reserve room on the disk for the outcome, so a full disk cannot cost the exit code.
4. If queued, wait for the scheduling pass to grant the run its GPUs (and, while waiting,
   run that pass for everyone if no other queued runner does).
5. Run the command on a pseudo-terminal (pdb, progress bars), every byte to the log.
6. When the command ends, for whatever reason (torchrun SIGKILLed included), end every
   process that still carries the run's marker; then write the outcome, then fold it into
   the registry (retrying until there is room), then let queued jobs have the GPUs.

If the runner's own terminal goes away (tmux session or server killed: SIGHUP) or it is told
to end (SIGTERM), it ends the job's processes and records the run as ``lost`` with why.

What differs by backend is asked of the run's backend's job side
(:class:`handyjobs.backends.base.JobSide`): under a scheduler of its own the run is granted by
that scheduler (step 4 is skipped), its signals mean what the scheduler means by them, the
command is the backend's, and a clean exit after a warning may mean the run goes on.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from handyjobs.backends import base as backends
from handyjobs.core import lifecycle, paths, procs, registry
from handyjobs.core.records import (
    JobRecord,
    JobSpec,
    JobState,
    LaunchEnv,
    LostKind,
    Outcome,
    Reason,
    RunStatus,
    utcnow,
)
from handyjobs.errors import HandyjobsError, StorageError
from handyjobs.jobside import launch
from handyjobs.views import render

if TYPE_CHECKING:
    from handyjobs.gpus.discovery import Watch

#: Seconds between two looks at the run's record while it is queued.
QUEUE_POLL_S = 0.25
#: Seconds between two scheduling passes by the queued runner that schedules.
SCHEDULE_EVERY_S = 1.0
#: Seconds the job's leftover processes get after SIGTERM, once its main process has ended.
LEFTOVER_GRACE_S = 5.0
#: Bytes the status file always takes, so the outcome can be written in place on a full disk.
STATUS_SIZE = 4096
#: Bytes set aside on the disk while the run lasts, given back to write the outcome.
RESERVE_SIZE = 64 * 1024
#: Seconds between two tries to store the outcome while the disk is full.
DISK_RETRY_S = 2.0
#: Set by the batch script a scheduler runs, to the backend's name: that scheduler, not a
#: terminal, signals this runner, from its first moment.
SCHEDULED_ENV = "HANDYJOBS_SCHEDULED"


class RunnerEnd(Exception):
    """The runner was told to end (its terminal hung up, or a signal): end the job, say lost."""

    def __init__(self, signum: int) -> None:
        """Remember which signal it was."""
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # Once is enough: the clean-up that follows must not be interrupted by a second hangup.
    for sig in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise RunnerEnd(signum)


class StatusFile:
    """The run's status file, with room reserved so that the outcome always fits."""

    def __init__(self, root: Path, name: str, run_id: str) -> None:
        """Start the status with this runner's identity; nothing is written yet."""
        self.root, self.name = root, name
        self.path = paths.status_path(name, run_id, root)
        self.reserve_path = paths.reserve_path(name, run_id, root)
        me = procs.proc_id(os.getpid())
        assert me is not None
        self.status = RunStatus(run_id=run_id, runner=me, boot_id=paths.boot_id())

    def _bytes(self) -> bytes:
        data = json.dumps(self.status.to_dict()).encode()
        return data + b" " * max(0, STATUS_SIZE - len(data) - 1) + b"\n"

    def write(self) -> None:
        """Replace the file atomically; on a full disk, overwrite it in place or use the room."""
        data = self._bytes()
        try:
            paths.ensure_private_dir(self.path.parent)  # the job's folder may have been deleted
            paths.write_atomic(self.path, data)
            return
        except (OSError, StorageError) as exc:
            if isinstance(exc, OSError) and not paths.is_disk_full(exc):
                raise
        # The file already holds STATUS_SIZE bytes of blocks: writing over them needs no room.
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_WRONLY)
            try:
                if os.fstat(fd).st_size >= len(data):
                    os.pwrite(fd, data, 0)
                    os.fsync(fd)
                    return
            finally:
                os.close(fd)
        self.release()  # give back the reserved room and try once more
        paths.write_atomic(self.path, data)

    def reserve(self) -> None:
        """Set room aside for the end of the run (best effort: a full disk may refuse it)."""
        with contextlib.suppress(OSError):
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_SIZE)
            finally:
                os.close(fd)

    def release(self) -> None:
        """Give the reserved room back."""
        with contextlib.suppress(OSError):
            os.unlink(self.reserve_path)


def _say(log_fd: int, text: str) -> None:
    """A handyjobs line in the log and on the pane (dimmed there)."""
    line = f"[handyjobs] {text}\n".encode(errors="replace")
    with contextlib.suppress(OSError):  # the log may be unwritable; the pane still shows it
        paths.write_all(log_fd, line)
    with contextlib.suppress(OSError):  # the pane may be gone; the log has the line
        os.write(1, b"\x1b[2m" + line + b"\x1b[0m" if os.isatty(1) else line)


def _open_log(path: str) -> tuple[int, str | None]:
    """The log, opened for appending; /dev/null and the reason when it cannot be opened."""
    try:
        paths.ensure_private_dir(Path(path).parent)
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), None
    except (OSError, StorageError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        return os.open(os.devnull, os.O_WRONLY), f"cannot open the log: {why}"


def _store(root: Path, step: str, fn: Callable[[registry.Registry], None], log_fd: int) -> None:
    """Run a registry update, retrying while the disk is full (the status file has the truth)."""
    said = False
    for _ in range(5):
        try:
            with registry.locked(root) as reg:
                fn(reg)
            return
        except StorageError as exc:
            if not said:
                _say(log_fd, f"cannot {step} yet ({exc}); retrying")
                said = True
            time.sleep(DISK_RETRY_S)
    _say(log_fd, f"gave up trying to {step}; `handyjobs list` reads the outcome from its file")


class Runner:
    """One run's runner."""

    def __init__(self, root: Path, name: str, run_id: str) -> None:
        """Identify the run; nothing happens until :meth:`run`."""
        self.root, self.name, self.run_id = root, name, run_id
        self.status = StatusFile(root, name, run_id)
        self.log_fd = -1
        self.log_error: str | None = None
        self.main: int | None = None
        #: Set once the record was found: before that, nothing of ours may be written.
        self.verified = False
        #: The run's backend's half in this session (known once the record was read).
        self.side: backends.JobSide | None = None

    # -- the steps ------------------------------------------------------------------------

    def _record(self) -> JobRecord | None:
        """Our record, if it still names this run; read under the shared lock."""
        with registry.shared(self.root):
            record = registry.load_one(self.name, self.root)
        if record is None or record.current.run_id != self.run_id:
            return None
        return record

    def _env(self) -> dict[str, str]:
        data = paths.env_path(self.name, self.root).read_bytes()
        launch_env = LaunchEnv.from_dict(json.loads(data))
        if launch_env.name != self.name:
            raise ValueError(f"the environment file belongs to job {launch_env.name}")
        return launch_env.env

    def _fail_to_start(self, detail: str) -> int:
        _say(self.log_fd if self.log_fd >= 0 else os.open(os.devnull, os.O_WRONLY), detail)
        reason = Reason(LostKind.START_FAILED, detail)
        with contextlib.suppress(HandyjobsError), registry.locked(self.root) as reg:
            lifecycle.fail_to_start(reg, self.name, self.run_id, reason)
        return 1

    def _wait_for_grant(self, env: dict[str, str]) -> tuple[int, ...] | None:
        """Wait in the queue; schedule for everyone while holding the scheduler lock."""
        from handyjobs.core import scheduler

        said = None
        failed = ""
        sched_fd = -1
        next_pass = 0.0
        looking: Watch | None = None  # one NVML session while this runner schedules
        try:
            while True:
                record = registry.load_one(self.name, self.root)
                run = None if record is None else record.run_by_id(self.run_id)
                if run is None or not run.state.active:
                    return None
                if run.stop_requested:
                    with registry.locked(self.root) as reg:
                        lifecycle.cancel(reg, self.name, self.run_id)
                    return None
                if run.state is JobState.RUNNING:
                    return run.gpus
                if run.wait is not None and run.wait != said:
                    _say(self.log_fd, f"queued: {render.wait_text(run.wait)}")
                    said = run.wait
                if sched_fd < 0:
                    sched_fd = _try_lock(paths.scheduler_lock_path(self.root))
                if sched_fd >= 0 and time.monotonic() >= next_pass:
                    try:
                        if looking is None:
                            from handyjobs.gpus import discovery as gpus

                            looking = gpus.Watch(env)
                        scheduler.schedule_pass(self.root, env, looking)
                    except HandyjobsError as exc:
                        # A GPU that cannot be read (or a full disk) must not end the wait:
                        # say so once, and try again at the next pass.
                        if str(exc) != failed:
                            _say(self.log_fd, f"cannot schedule yet: {exc}")
                            failed = str(exc)
                    next_pass = time.monotonic() + SCHEDULE_EVERY_S
                time.sleep(QUEUE_POLL_S)
        finally:
            if looking is not None:
                looking.close()
            if sched_fd >= 0:
                os.close(sched_fd)

    def _on_start(self, pid: int, job: launch.Launch, gpus: tuple[int, ...] | None) -> None:
        self.main = pid
        st = self.status.status
        st.main, st.started_at = procs.proc_id(pid), utcnow()
        st.rendezvous, st.gpus = job.rendezvous, gpus or ()
        self.status.write()
        # Best effort: `list` folds the status file itself if the registry is busy or full.
        with contextlib.suppress(HandyjobsError), registry.locked(self.root) as reg:
            record = reg.get(self.name)
            if record is not None:
                lifecycle.begin(reg, self.name, self.run_id, st)

    def _end_leftovers(self) -> int:
        """End every process still carrying the run's marker; return how many there were."""
        ended = procs.terminate(self.run_id, grace_s=LEFTOVER_GRACE_S)
        procs.reap_children()
        return len(ended.pids)

    def _conclude(self, outcome: Outcome | None, lost: Reason | None) -> None:
        """Write the outcome where it cannot be lost, then fold it into the registry."""
        st = self.status.status
        st.outcome, st.lost = outcome, lost
        said = False
        while True:
            try:
                self.status.write()
                break
            except (OSError, StorageError) as exc:
                if not said:
                    _say(self.log_fd, f"waiting for room on the disk to record the outcome ({exc})")
                    said = True
                time.sleep(DISK_RETRY_S)
        self.status.release()
        self._fold(st, "record the outcome in the registry")

    def _fold(self, st: RunStatus, what: str) -> None:
        """Fold our status into the registry (what: the step, for the log if it fails)."""

        def fold(reg: registry.Registry) -> None:
            record = reg.get(self.name)
            if record is not None:
                lifecycle.fold_status(reg, record, st)

        _store(self.root, what, fold, self.log_fd)

    def run(self) -> int:
        """The runner's whole life; returns the job's shell-style exit code."""
        from handyjobs.jobside import rotation, terminal
        from handyjobs.jobside.sampler import Sampler
        from handyjobs.jobside.tee import run_on_pty

        procs.set_child_subreaper()  # orphaned torchrun workers come back to us, not to init
        record = self._record()
        if record is None:
            return 1  # the start that made this session died before saving: start nothing
        run = record.current
        self.verified = True
        spec: JobSpec = record.spec
        # Under a scheduler of the backend's own, it grants, signals and requeues.
        side = self.side = backends.job_side(run.backend)
        side.take_signals(self)
        self.log_fd, self.log_error = _open_log(record.log_path)
        never = side.ended_before_start()
        if never:
            # Ended by the scheduler before it started (cancelled just after the submit):
            # nothing to start, nothing to record; the scheduler's own view says how it ended.
            _say(self.log_fd, never)
            return 143
        try:
            env = self._env()
        except (OSError, ValueError, KeyError) as exc:
            return self._fail_to_start(f"cannot read the job's environment file ({exc})")
        if not run.state.active or run.stop_requested:
            # Ended before we got here: stopped, or a dependency failed as we started up.
            if run.stop_requested and run.state.active:
                with contextlib.suppress(HandyjobsError), registry.locked(self.root) as reg:
                    lifecycle.cancel(reg, self.name, self.run_id)
            self._never_started(spec, env)
            return 1
        # Settings such as the tmux socket and a fake GPU file are the caller's, not tmux's.
        os.environ.update({k: v for k, v in env.items() if k.startswith("HANDYJOBS_")})
        try:
            self.status.write()
        except (OSError, StorageError) as exc:
            return self._fail_to_start(f"cannot write the run's status file ({exc})")
        self.status.reserve()
        gpus: tuple[int, ...] | None = run.gpus
        if run.state is JobState.QUEUED and not side.scheduled:
            gpus = self._wait_for_grant(env)
            if gpus is None:
                self.status.path.unlink(missing_ok=True)
                self.status.release()
                self._never_started(spec, env)
                return 1
        booked = gpus if spec.books_gpus else None
        ctx = launch.RunContext(
            self.name,
            run.run,
            self.run_id,
            booked,
            record.log_path,
            str(paths.job_dir(self.name, self.root)),
            rdzv_port=_free_port() if side.scheduled else None,
            rank_python=sys.executable,
        )
        job = side.command(spec, ctx, env, os.environ)
        limit, bad_limit = rotation.limit_from_env(env)
        if bad_limit:
            _say(self.log_fd, bad_limit)
        rotator = rotation.Rotator(record.log_path, self.log_fd, limit) if limit else None
        # Several ranks tag their lines; the pane shows rank 0's as a lone process would.
        pane_filter = terminal.PaneFilter().feed if spec.procs > 1 else None
        sampler = Sampler(self.run_id, env, gpus=not spec.cpu)
        where = f"GPUs {','.join(map(str, booked))}" if booked else ("CPU" if spec.cpu else "")
        placed = side.where(os.environ)
        where = ", ".join(w for w in (placed, where) if w)
        _say(
            self.log_fd,
            f"run {ctx.run} of {self.name} started {utcnow()}{' on ' + where if where else ''}: "
            f"{render.printable(launch.display(job.argv))}",
        )
        started = time.monotonic()

        def on_start(pid: int) -> None:
            sampler.start()
            self._on_start(pid, job, booked)

        result = run_on_pty(
            job.argv,
            job.env,
            spec.cwd,
            self.log_fd,
            on_start=on_start,
            # In a batch script nobody reads the runner's own output: the log has every byte.
            echo_fd=1 if side.interactive else None,
            input_fd=0 if side.interactive else None,
            rotator=rotator,
            pane_filter=pane_filter,
        )
        cost = sampler.finish(result.rusage)
        notes = side.job_ended()
        leftovers = self._end_leftovers()
        how = (
            f"exit code {result.exit_code}" if result.signal is None else f"signal {result.signal}"
        )
        extra = f"; ended {leftovers} leftover process(es)" if leftovers else ""
        _say(
            self.log_fd,
            f"run {ctx.run} of {self.name} ended {utcnow()}: {how} after "
            f"{time.monotonic() - started:.1f}s{extra}",
        )
        for note in notes:
            _say(self.log_fd, note)
        if side.goes_on(spec, result.exit_code):
            self.status.release()
            return 0
        outcome = Outcome(
            result.exit_code,
            result.signal,
            utcnow(),
            leftovers=leftovers,
            log_error=self.log_error or result.log_error,
            by_scheduler=side.ended_by_scheduler,
            cost=cost,
        )
        self._conclude(outcome, None)
        self._schedule_others(env)
        self._on_exit(spec, env)
        return result.returncode

    # -- what the backend's job side may ask (JobControl) -----------------------------------

    def main_pid(self) -> int | None:
        """The job's main process, once started (our own child until it is reaped)."""
        return self.main

    def say(self, text: str) -> None:
        """One ``handyjobs:`` line into the log."""
        _say(self.log_fd, text)

    def record_requeue(self, requeued: bool) -> None:
        """Record that the scheduler requeues the run (True), or take that back (False)."""
        st = self.status.status
        st.requeued = requeued
        if requeued:
            self.status.write()
            self._fold(st, "record the requeue in the registry")

    def _ended_run(self) -> tuple[JobRecord | None, str]:
        """Our record as it is now, and our run's end state (as far as it can be read)."""
        with contextlib.suppress(HandyjobsError):
            record = registry.load_one(self.name, self.root)
            run = None if record is None else record.run_by_id(self.run_id)
            if record is not None and run is not None:
                return record, run.state.value
        return None, "unknown"

    def _never_started(self, spec: JobSpec, env: dict[str, str]) -> None:
        """The run left the queue without starting (stopped, removed, a dependency failed)."""
        record, state = self._ended_run()
        run = None if record is None else record.run_by_id(self.run_id)
        if run is not None and run.reason is not None:
            _say(self.log_fd, render.reason_text(run.reason))
        else:
            _say(self.log_fd, f"not started ({state} before it started)")
        self._on_exit(spec, env)

    def _on_exit(self, spec: JobSpec, env: dict[str, str]) -> None:
        """Run the job's ``--on-exit`` command, its output into the log; a failure is noted."""
        if not spec.on_exit:
            return
        from handyjobs.jobside import hooks

        record, state = self._ended_run()
        run = None if record is None else record.run_by_id(self.run_id)
        log_path = str(paths.log_path(self.name, self.root)) if record is None else record.log_path
        note = hooks.run_on_exit(spec, self.name, run, state, env, self.log_fd, log_path)
        if note:
            _say(self.log_fd, note)

    def _schedule_others(self, env: dict[str, str]) -> None:
        """Our GPUs are free now: let queued jobs have them without waiting for a poll."""
        from handyjobs.core import scheduler

        with contextlib.suppress(HandyjobsError):
            scheduler.schedule_pass(self.root, env)

    def end_on_signal(self, exc: RunnerEnd) -> int:
        """The terminal hung up or we were told to end: end the job, record ``lost``."""
        if not self.verified:
            return 128 + exc.signum
        self._end_leftovers()
        if self.status.status.outcome is not None:  # the job had ended: keep its outcome
            with contextlib.suppress(OSError):
                self._conclude(self.status.status.outcome, None)
            return 128 + exc.signum
        if self.side is not None and self.side.scheduled:
            return 128 + exc.signum  # the scheduler ended it before it started: its view says
        kind = LostKind.SESSION_GONE if exc.signum == signal.SIGHUP else LostKind.RUNNER_DIED
        with contextlib.suppress(OSError):
            self._conclude(None, Reason(kind, detail=str(exc)))
        return 128 + exc.signum

    def end_on_error(self, exc: BaseException) -> int:
        """An unexpected error of our own: end the job, record ``lost`` with the error."""
        if not self.verified:
            raise exc
        self._end_leftovers()
        detail = f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(OSError):
            _say(self.log_fd, f"runner error: {detail}")
            self._conclude(None, Reason(LostKind.RUNNER_ERROR, detail=detail))
        return 1


def _free_port() -> int:
    """A TCP port free on this node now, for the rendezvous store torchrun starts here."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


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


def run(root: Path, name: str, run_id: str) -> int:
    """Run one run to its end; returns the job's shell-style exit code."""
    signal.signal(signal.SIGHUP, _on_signal)
    scheduled_by = os.environ.get(SCHEDULED_ENV)
    if scheduled_by:
        backends.early_signals(scheduled_by)
    else:
        signal.signal(signal.SIGTERM, _on_signal)
    runner = Runner(root, name, run_id)
    try:
        return runner.run()
    except RunnerEnd as exc:
        return runner.end_on_signal(exc)
    except Exception as exc:  # anything unexpected must still end the job and say so
        return runner.end_on_error(exc)


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m handyjobs.jobside.runner HOME NAME RUN_ID``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        sys.exit(
            "usage: python -m handyjobs.jobside.runner HOME NAME RUN_ID (started by handyjobs)"
        )
    sys.exit(run(Path(args[0]), args[1], args[2]))


if __name__ == "__main__":
    main()
