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
import os
import signal
import sys
import termios
import time
from pathlib import Path
from types import FrameType

from handyjobs.backends import base as backends
from handyjobs.core import cgroups, lifecycle, paths, procs, registry, scheduler
from handyjobs.core.records import (
    Cost,
    JobRecord,
    JobSpec,
    JobState,
    LostKind,
    Outcome,
    Reason,
    RunStatus,
    utcnow,
)
from handyjobs.errors import HandyjobsError, StorageError, UsageError
from handyjobs.jobside import hooks, launch, limits, rotation, terminal, waiting
from handyjobs.jobside.sampler import Sampler
from handyjobs.jobside.statusfile import (
    DISK_RETRY_S,
    StatusFile,
    launch_env,
    open_log,
    own_record,
    say,
    store,
)
from handyjobs.jobside.tee import Outcome as PtyResult
from handyjobs.jobside.tee import drop_typed_ahead, quiet_pane, run_on_pty
from handyjobs.structs import replace
from handyjobs.views import render

#: Seconds the job's leftover processes get after SIGTERM, once its main process has ended.
LEFTOVER_GRACE_S = 5.0
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
        #: The run's cgroup (empty until the job starts, and where none can be had).
        self.group = cgroups.RunGroup(run_id)

    # -- the steps ------------------------------------------------------------------------

    def _fail_to_start(self, detail: str) -> int:
        say(self.log_fd if self.log_fd >= 0 else os.open(os.devnull, os.O_WRONLY), detail)
        reason = Reason(LostKind.START_FAILED, detail)
        with contextlib.suppress(HandyjobsError), registry.locked(self.root) as reg:
            lifecycle.fail_to_start(reg, self.name, self.run_id, reason)
        return 1

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
        """End every process of the run still there (its cgroup's members, or the marked ones
        without one), then remove the emptied cgroup; return how many there were."""
        ended = procs.terminate(self.run_id, grace_s=LEFTOVER_GRACE_S)
        procs.reap_children()
        self.group.remove()
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
                    say(self.log_fd, f"waiting for room on the disk to record the outcome ({exc})")
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

        store(self.root, what, fold, self.log_fd)

    def run(self) -> int:
        """The runner's whole life; returns the job's shell-style exit code."""
        procs.set_child_subreaper()  # orphaned torchrun workers come back to us, not to init
        ready = self._prepare()
        if isinstance(ready, int):
            return ready
        record, env = ready
        restore = quiet_pane() if self._side().interactive else []
        try:
            return self._wait_and_execute(record, env)
        finally:
            for step in reversed(restore):
                with contextlib.suppress(OSError, termios.error):
                    step()

    def _wait_and_execute(self, record: JobRecord, env: dict[str, str]) -> int:
        """Wait in the queue unless a scheduler granted the run, then run the job."""
        gpus: tuple[int, ...] | None = record.current.gpus
        if record.current.state is JobState.QUEUED and not self._side().scheduled:
            gpus = waiting.wait_for_grant(self.root, self.name, self.run_id, env, self.log_fd)
            if gpus is None:
                self.status.path.unlink(missing_ok=True)
                self.status.release()
                self._never_started(record.spec, env)
                return 1
            record = registry.load_one(self.name, self.root) or record  # `edit` while queued
        return self._execute(record, env, gpus if record.spec.books_gpus else None)

    def _side(self) -> backends.JobSide:
        assert self.side is not None, "the job side is known once the record was read"
        return self.side

    def _prepare(self) -> tuple[JobRecord, dict[str, str]] | int:
        """Find our record, take the backend's signals, open the log, read the environment,
        write the first status; the record and environment, or the exit code to leave with."""
        record = own_record(self.root, self.name, self.run_id)
        if record is None:
            return 1  # the start that made this session died before saving: start nothing
        run = record.current
        self.verified = True
        # Under a scheduler of the backend's own, it grants, signals and requeues.
        side = self.side = backends.job_side(run.backend)
        side.take_signals(self)
        self.status.status = replace(self.status.status, attempt=side.attempt(os.environ))
        self.log_fd, self.log_error = open_log(record.log_path)
        never = side.ended_before_start()
        if never:
            # Ended by the scheduler before it started (cancelled just after the submit):
            # nothing to start, nothing to record; the scheduler's own view says how it ended.
            say(self.log_fd, never)
            return 143
        try:
            env = launch_env(self.root, self.name)
        except (OSError, ValueError, KeyError) as exc:
            return self._fail_to_start(f"cannot read the job's environment file ({exc})")
        if not run.state.active or run.stop_requested:
            # Ended before we got here: stopped, or a dependency failed as we started up.
            if run.stop_requested and run.state.active:
                with contextlib.suppress(HandyjobsError), registry.locked(self.root) as reg:
                    lifecycle.cancel(reg, self.name, self.run_id)
            self._never_started(record.spec, env)
            return 1
        # Settings such as the tmux socket and a fake GPU file are the caller's, not tmux's.
        os.environ.update({k: v for k, v in env.items() if k.startswith("HANDYJOBS_")})
        try:
            self.status.write()
        except (OSError, StorageError) as exc:
            return self._fail_to_start(f"cannot write the run's status file ({exc})")
        self.status.reserve()
        return record, env

    def _execute(
        self, record: JobRecord, env: dict[str, str], booked: tuple[int, ...] | None
    ) -> int:
        """Start the job on a terminal, tee it into the log until it ends, then conclude."""
        spec, side = record.spec, self._side()
        ctx = launch.RunContext(
            self.name,
            record.current.run,
            self.run_id,
            booked,
            record.log_path,
            str(paths.job_dir(self.name, self.root)),
            rdzv_port=_free_port() if side.scheduled else None,
            rank_python=sys.executable,
        )
        job = side.command(spec, ctx, env, os.environ)
        watch = limits.Watch(self.run_id, spec)
        try:
            self.group = watch.make_group()
        except UsageError as exc:  # --mem could be had at start, not now: never run without
            return self._fail_to_start(str(exc))
        self.status.status.containment = self.group.kind
        limit, bad_limit = rotation.limit_from_env(env)
        if bad_limit:
            say(self.log_fd, bad_limit)
        sampler = Sampler(self.run_id, env, gpus=not spec.cpu)
        where = f"GPUs {','.join(map(str, booked))}" if booked else ("CPU" if spec.cpu else "")
        where = ", ".join(w for w in (side.where(os.environ), where) if w)
        say(
            self.log_fd,
            f"run {ctx.run} of {self.name} started {utcnow()}{' on ' + where if where else ''}: "
            f"{render.printable(launch.display(job.argv))}",
        )
        started = time.monotonic()

        def on_start(pid: int) -> None:
            sampler.start()
            watch.start(pid)
            self._on_start(pid, job, booked)

        if side.interactive:
            drop_typed_ahead(0)
        result = run_on_pty(
            job.argv,
            job.env,
            spec.cwd,
            self.log_fd,
            on_start=on_start,
            # In a batch script nobody reads the runner's own output: the log has every byte.
            echo_fd=1 if side.interactive else None,
            input_fd=0 if side.interactive else None,
            rotator=rotation.Rotator(record.log_path, self.log_fd, limit) if limit else None,
            # Several ranks tag their lines; the pane shows rank 0's as a lone process would.
            pane_filter=terminal.PaneFilter().feed if spec.world_size > 1 else None,
            join=self.group.procs_files,
        )
        cost = side.cost(sampler.finish(result.rusage))
        return self._finish(record, env, result, cost, time.monotonic() - started, watch)

    def _finish(
        self,
        record: JobRecord,
        env: dict[str, str],
        result: PtyResult,
        cost: Cost | None,
        took_s: float,
        watch: limits.Watch,
    ) -> int:
        """The job ended: end what it left, say how it ended, record the outcome (or go on)."""
        spec, side = record.spec, self._side()
        why = watch.end(result.exit_code, result.signal)  # before its cgroup goes (OOM kills)
        notes = [*side.job_ended(), *watch.notes]
        leftovers = self._end_leftovers()
        say(self.log_fd, _ended_line(record.current.run, self.name, result, took_s, leftovers))
        for note in notes:
            say(self.log_fd, note)
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
            reason=why or side.stop_reason(result.exit_code),
        )
        self._conclude(outcome, None)
        with contextlib.suppress(HandyjobsError):  # our GPUs are free: let the queue have them
            scheduler.schedule_pass(self.root, env)
        self._on_exit(spec, env)
        return result.returncode

    # -- what the backend's job side may ask (JobControl) -----------------------------------

    def main_pid(self) -> int | None:
        """The job's main process, once started (our own child until it is reaped)."""
        return self.main

    def say(self, text: str) -> None:
        """One ``handyjobs:`` line into the log."""
        say(self.log_fd, text)

    def record_requeue(self, requeued: bool) -> None:
        """Record that the scheduler requeues the run (True), or take that back (False)."""
        st = self.status.status
        st.requeued = requeued
        if requeued:
            self.status.write()
            self._fold(st, "record the requeue in the registry")

    def _never_started(self, spec: JobSpec, env: dict[str, str]) -> None:
        """The run left the queue without starting (stopped, removed, a dependency failed)."""
        record, state = hooks.ended_run(self.root, self.name, self.run_id)
        run = None if record is None else record.run_by_id(self.run_id)
        if run is not None and run.reason is not None:
            say(self.log_fd, render.reason_text(run.reason))
        else:
            say(self.log_fd, f"not started ({state} before it started)")
        self._on_exit(spec, env)

    def _on_exit(self, spec: JobSpec, env: dict[str, str]) -> None:
        """Run the job's ``--on-exit`` command, its output into the log; a failure is noted."""
        note = hooks.after_run(self.root, self.name, self.run_id, spec, env, self.log_fd)
        if note:
            say(self.log_fd, note)

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
            say(self.log_fd, f"runner error: {detail}")
            self._conclude(None, Reason(LostKind.RUNNER_ERROR, detail=detail))
        return 1


def _ended_line(run: int, name: str, result: PtyResult, took_s: float, leftovers: int) -> str:
    """The log's line at a run's end: how its command ended, after how long, what was left."""
    how = f"exit code {result.exit_code}" if result.signal is None else f"signal {result.signal}"
    extra = f"; ended {leftovers} leftover process(es)" if leftovers else ""
    return f"run {run} of {name} ended {utcnow()}: {how} after {took_s:.1f}s{extra}"


def _free_port() -> int:
    """A TCP port free on this node now, for the rendezvous store torchrun starts here."""
    import socket  # lazy: only this path needs it (start-up)

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


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
