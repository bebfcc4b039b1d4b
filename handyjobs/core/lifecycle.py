"""Every transition of a run, in one place, addressed by run id, along one table; reconcile.

A run's ``state`` is assigned nowhere else, and here only by :func:`_apply`, which lets a
change through when :data:`TABLE` has a row for it. Each transition takes the registry (held
under the lock by the caller), the job's name and the run id the caller read: a stop meant
for run 1 can never mark run 2, and a runner that finishes late never touches its successor.
A transition that does not apply (the run ended meanwhile, the job was removed, the table has
no such row) changes nothing and returns False.

::

    queued ──grant / begin──> running ──finish──> succeeded | failed | stopped
       │  <──requeue / observe──┘ │
       ├──cancel──> stopped       ├──cancel──> stopped (its runner went after a stop)
       ├──fail_to_start──> failed └──fail_to_start──> failed (granted, never began)
       └──lose──> lost            └──lose──> lost (runner died, session gone, reboot)
    running <──pause / resume──> paused (processes stopped, GPUs kept): it ends as running does

A run whose backend has a scheduler of its own (``Probe.queues``) also moves by that
scheduler's view, as the backend puts it into neutral data (:class:`ClusterState`): queued with
its reason (held while the scheduler holds it), running once it runs, paused while the
scheduler suspends it, back to queued when it is requeued (:func:`observe`, :func:`requeue`),
and ended by the scheduler's verdict when the job side could not say (:func:`end_by_cluster`).
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Callable, Mapping
from pathlib import Path

from handyjobs.core import paths
from handyjobs.core.records import (
    ClusterState,
    GpuBaseline,
    JobRecord,
    JobState,
    LostKind,
    Outcome,
    Reason,
    Run,
    RunStatus,
    Wait,
    utcnow,
)
from handyjobs.core.status import read_status as read_status  # callers read it from here
from handyjobs.core.stores import Probe as Probe  # callers name them from here
from handyjobs.core.stores import Scratch as Scratch
from handyjobs.core.stores import Store as Store
from handyjobs.structs import fields, replace


class Event(str, enum.Enum):
    """What happened to a run: each transition function below is one event."""

    GRANT = "grant"
    SET_WAIT = "set_wait"
    BEGIN = "begin"
    REQUEST_STOP = "request_stop"
    OBSERVE = "observe"
    REQUEUE = "requeue"
    FINISH = "finish"
    CANCEL = "cancel"
    FAIL_TO_START = "fail_to_start"
    LOSE = "lose"
    END_BY_CLUSTER = "end_by_cluster"
    CLEAN = "clean"
    PAUSE = "pause"
    RESUME = "resume"
    HOLD = "hold"
    RELEASE = "release"
    EDIT = "edit"
    RELAUNCH = "relaunch"


_Q, _R, _P = JobState.QUEUED, JobState.RUNNING, JobState.PAUSED
_OK, _FAILED, _STOPPED, _LOST = JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED, JobState.LOST
#: How a run whose command began ends by its command, running or paused alike.
_FINISHED = {
    _OK: "its command exited 0 and no stop was asked",
    _FAILED: "its command exited non-zero, by a signal or at a limit, and no stop was asked",
    _STOPPED: "its command ended after the user asked it to stop",
}

#: The legal changes of a run: (from state, event) -> {to state: what the row means}. A row
#: whose two states are the same changes what is known of the run, not where it is. Nothing
#: leaves an end state except the clean-up of a lost run's leftovers.
TABLE: Mapping[tuple[JobState, Event], Mapping[JobState, str]] = {
    (_Q, Event.GRANT): {_R: "this machine's queue booked its GPUs (or a free slot): it may start"},
    (_Q, Event.SET_WAIT): {_Q: "why it waits changed (GPUs held, a dependency, a limit, place)"},
    (_Q, Event.BEGIN): {
        _Q: "its runner is up and waits in the queue: the runner's identity is recorded",
        _R: "its runner started the command though the record said queued (a scheduler of the "
        "backend's own granted it)",
    },
    (_R, Event.BEGIN): {_R: "its runner started the command: pids, start time, rendezvous"},
    (_Q, Event.REQUEST_STOP): {_Q: "the user asked it to stop while it waits: it never starts"},
    (_R, Event.REQUEST_STOP): {_R: "the user asked it to stop: its end will read stopped"},
    (_Q, Event.OBSERVE): {
        _Q: "the scheduler says it still waits: its reason becomes the wait",
        _R: "the scheduler says it runs now",
    },
    (_R, Event.OBSERVE): {
        _R: "the scheduler says it still runs (on these nodes)",
        _Q: "the scheduler queued it again after it ran (preempted, node failed): a restart",
        _P: "the scheduler says it is suspended: its processes are stopped there",
    },
    (_P, Event.OBSERVE): {
        _P: "the scheduler says it is still suspended",
        _R: "the scheduler says it runs again (resumed there)",
        _Q: "the scheduler queued it again while it was suspended: a restart",
    },
    (_R, Event.REQUEUE): {
        _Q: "the job side had the scheduler requeue it (time-limit warning): it starts again"
    },
    (_R, Event.FINISH): _FINISHED,
    (_Q, Event.CANCEL): {_STOPPED: "stopped while it waited: it never began"},
    (_R, Event.CANCEL): {_STOPPED: "stopped, and its runner went before recording the end"},
    (_Q, Event.FAIL_TO_START): {
        _FAILED: "it could not start: its files, or a dependency that did not succeed",
        _STOPPED: "it could not start, and a stop had been asked",
    },
    (_R, Event.FAIL_TO_START): {
        _FAILED: "granted, but its runner could not start the command (its files)",
        _STOPPED: "granted, could not start, and a stop had been asked",
    },
    (_Q, Event.LOSE): {_LOST: "its runner went while it waited (session killed, reboot)"},
    (_R, Event.LOSE): {
        _LOST: "its runner went with no outcome (killed, session gone, reboot, own error)"
    },
    (_Q, Event.END_BY_CLUSTER): {
        _FAILED: "the scheduler failed it before it began (a dependency, nodes that did not boot)",
        _STOPPED: "the scheduler cancelled it before it began",
        _LOST: "the scheduler ended it before it began, for reasons of its own, or forgot it",
    },
    (_R, Event.END_BY_CLUSTER): {
        _OK: "the scheduler says it completed",
        _FAILED: "the scheduler says it failed (time limit, memory, preemption)",
        _STOPPED: "the scheduler cancelled it, or it ended after a stop was asked",
        _LOST: "the scheduler ended it and the job side recorded nothing (node failure)",
    },
    (_LOST, Event.CLEAN): {_LOST: "stop ended a lost run's leftover processes: none is left"},
    (_R, Event.PAUSE): {_P: "the user paused it (SIGSTOP to its processes); its GPUs stay booked"},
    (_P, Event.RESUME): {_R: "the user resumed it (SIGCONT to its processes)"},
    (_P, Event.REQUEST_STOP): {_P: "the user asked it to stop while paused: stop continues it"},
    (_P, Event.FINISH): _FINISHED,
    (_P, Event.CANCEL): {_STOPPED: "stopped while paused, and its runner went before recording"},
    (_P, Event.LOSE): {_LOST: "its runner went while it was paused (killed, reboot)"},
    (_P, Event.END_BY_CLUSTER): {
        _FAILED: "the scheduler says it failed while suspended (time limit, preemption)",
        _STOPPED: "the scheduler cancelled it while suspended, or it ended after a stop",
        _LOST: "the scheduler ended it while suspended and the job side recorded nothing",
    },
    (_Q, Event.HOLD): {_Q: "the user held it: it keeps out of the queue until released"},
    (_Q, Event.RELEASE): {_Q: "the user released it: it waits in the queue again"},
    (_Q, Event.EDIT): {_Q: "the user changed the job before it started (processes, waits)"},
    (_Q, Event.RELAUNCH): {_Q: "the machine restarted while it waited: a new runner waits"},
    (_R, Event.RELAUNCH): {_Q: "the machine restarted after it was granted, before it began"},
}


def allowed(event: Event, src: JobState, dst: JobState) -> bool:
    """True when :data:`TABLE` has the row: ``event`` may take a run from ``src`` to ``dst``."""
    return dst in TABLE.get((src, event), {})


#: The scheduler-neutral word a requeue leaves as the scheduler's state until it next answers.
REQUEUED = "requeued"


def _target(store: Store, name: str, run_id: str) -> tuple[JobRecord, Run] | None:
    record = store.get(name)
    if record is None:
        return None
    run = record.run_by_id(run_id)
    return None if run is None else (record, run)


def _apply(
    store: Store, name: str, run_id: str, event: Event, step: Callable[[Run], JobState | None]
) -> bool:
    """The one place a run changes: ``step`` edits a copy and names the state it moves to
    (None: it does not apply); the change lands only when :data:`TABLE` allows it and it is
    news, else the run is left exactly as it was."""
    target = _target(store, name, run_id)
    if target is None:
        return False
    record, run = target
    work = copy.deepcopy(run)
    to = step(work)
    if to is None or not allowed(event, run.state, to):
        return False
    work.state = to
    if work == run:
        return False
    # In place: callers hold this Run object (a start sets its handle after granting it).
    was_queued = run.state is JobState.QUEUED
    for f in fields(Run):
        setattr(run, f.name, getattr(work, f.name))
    store.put(record)
    if was_queued:
        _wake(store, name, run_id)
    return True


def _wake(store: Store, name: str, run_id: str) -> None:
    """Tell a queued run's runner that its run changed (:func:`paths.wake`); stores without a
    folder (a scratch copy, the fast tests' memory) have no runner to wake."""
    root = getattr(store, "root", None)
    if isinstance(root, Path):
        paths.wake(name, run_id, root)


# ---- the transitions ---------------------------------------------------------------------


def grant(
    store: Store,
    name: str,
    run_id: str,
    gpus: tuple[int, ...],
    baseline: tuple[GpuBaseline, ...] = (),
) -> bool:
    """Queued -> running: the run may start (on ``gpus``, now booked for it, which looked as
    ``baseline`` says when they were booked)."""

    def step(run: Run) -> JobState | None:
        if run.stop_requested:
            return None
        run.gpus, run.wait, run.baseline = gpus, None, baseline
        return JobState.RUNNING

    return _apply(store, name, run_id, Event.GRANT, step)


def set_wait(store: Store, name: str, run_id: str, wait: Wait) -> bool:
    """Record why a queued run waits (data); True when that changed."""

    def step(run: Run) -> JobState | None:
        run.wait = wait
        return run.state

    return _apply(store, name, run_id, Event.SET_WAIT, step)


def begin(store: Store, name: str, run_id: str, status: RunStatus) -> bool:
    """The runner started the command: pids, start time, rendezvous; True when news."""

    def step(run: Run) -> JobState | None:
        if status.started_at and run.started_at is None:
            run.started_at = status.started_at
        if status.main is not None:
            run.main = status.main
        if status.runner.pid and (run.runner is None or run.runner.start is None):
            run.runner = status.runner
        if status.rendezvous:
            run.rendezvous = status.rendezvous
        if status.containment:
            run.containment = status.containment
        if status.gpus is not None and status.started_at:
            run.gpus = status.gpus
        if status.started_at:
            run.wait = None
            return JobState.RUNNING
        return run.state

    return _apply(store, name, run_id, Event.BEGIN, step)


def _ended(run: Run, outcome: Outcome) -> None:
    run.ended_at = outcome.ended_at
    run.exit_code, run.signal = outcome.exit_code, outcome.signal
    run.leftovers = outcome.leftovers
    run.log_error = outcome.log_error or run.log_error
    run.cost = outcome.cost or run.cost
    run.wait = None


def finish(store: Store, name: str, run_id: str, outcome: Outcome) -> bool:
    """The command ended: succeeded (exit 0), stopped (a stop was asked), or failed (its exit,
    or a limit of its own that ended it).

    Only a running run finishes: one that never began ends by the rows that say so.
    """

    def step(run: Run) -> JobState | None:
        _ended(run, outcome)
        if run.stop_requested:
            return JobState.STOPPED
        run.reason = outcome.reason  # a limit that ended it: failed, whatever its exit code
        if outcome.exit_code == 0 and outcome.signal is None and outcome.reason is None:
            return JobState.SUCCEEDED
        return JobState.FAILED

    return _apply(store, name, run_id, Event.FINISH, step)


def request_stop(store: Store, name: str, run_id: str, asked: bool = True) -> bool:
    """Mark that the user asked this run to stop (its end will read ``stopped``); with
    ``asked`` False, take that back (a stop interrupted while the run still goes on)."""

    def step(run: Run) -> JobState | None:
        run.stop_requested = asked
        return run.state

    return _apply(store, name, run_id, Event.REQUEST_STOP, step)


def pause(store: Store, name: str, run_id: str, paused: bool = True) -> bool:
    """Running -> paused (its processes were stopped), or back with ``paused`` False."""
    to = JobState.PAUSED if paused else JobState.RUNNING
    return _apply(store, name, run_id, Event.PAUSE if paused else Event.RESUME, lambda run: to)


def cancel(store: Store, name: str, run_id: str) -> bool:
    """An active run whose runner is gone after a stop: ``stopped``, now."""

    def step(run: Run) -> JobState | None:
        run.ended_at, run.wait = run.ended_at or utcnow(), None
        return JobState.STOPPED

    return _apply(store, name, run_id, Event.CANCEL, step)


def lose(
    store: Store, name: str, run_id: str, reason: Reason, outcome: Outcome | None = None
) -> bool:
    """The run ended with no outcome of its own: ``lost``, with why (and what was left)."""

    def step(run: Run) -> JobState | None:
        if outcome is not None:
            _ended(run, outcome)
        run.reason = reason
        run.ended_at, run.wait = run.ended_at or utcnow(), None
        return JobState.LOST

    return _apply(store, name, run_id, Event.LOSE, step)


def fail_to_start(store: Store, name: str, run_id: str, reason: Reason) -> bool:
    """The run could not start its command: ``failed``, with the reason (``stopped`` when a
    stop was asked). A run whose command began cannot fail to start."""

    def step(run: Run) -> JobState | None:
        if run.started_at is not None:
            return None
        run.ended_at, run.wait = utcnow(), None
        if run.stop_requested:
            return JobState.STOPPED
        run.reason = reason
        return JobState.FAILED

    return _apply(store, name, run_id, Event.FAIL_TO_START, step)


def cleaned(store: Store, name: str, run_id: str, pids: tuple[int, ...]) -> bool:
    """A lost run's leftover processes were ended by ``stop``: the reason says none is left."""

    def step(run: Run) -> JobState | None:
        if run.reason is None:
            return None
        run.reason = replace(run.reason, pids=())
        run.leftovers = len(pids)
        return run.state

    return _apply(store, name, run_id, Event.CLEAN, step)


def hold(store: Store, name: str, run_id: str, held: bool = True) -> bool:
    """Keep a queued run out of the queue until released (``held``), or release it; True
    when that changed. A run granted, begun or asked to stop is not held."""

    def step(run: Run) -> JobState | None:
        if run.started_at is not None or run.stop_requested:
            return None
        # Held, it says so where a queued run says why it waits; released, the next pass does.
        run.held, run.wait = held, Wait(0, 0, held=True) if held else None
        return run.state

    return _apply(store, name, run_id, Event.HOLD if held else Event.RELEASE, step)


def edit(
    store: Store, name: str, run_id: str, nproc: int, after_runs: dict[str, str] | None = None
) -> bool:
    """The job of a queued run was changed before the run began (``edit``): its processes,
    the runs it waits for (``after_runs``, when its ``--after`` changed) and why it waits (the
    next pass says again); True when the run changed."""

    def step(run: Run) -> JobState | None:
        if run.started_at is not None or run.stop_requested:
            return None
        run.nproc, run.wait = nproc, run.wait if run.held else None
        if after_runs is not None:
            run.after_runs = dict(after_runs)
        return run.state

    return _apply(store, name, run_id, Event.EDIT, step)


def relaunch(store: Store, name: str, run_id: str, boot: str) -> bool:
    """A run that had not begun when the machine restarted: queued again under this boot,
    with no runner (the caller starts a new one) and no GPUs booked."""

    def step(run: Run) -> JobState | None:
        if run.started_at is not None or run.stop_requested:
            return None
        run.boot_id, run.runner, run.main, run.handle = boot, None, None, {}
        run.gpus, run.baseline = (), ()
        run.wait = Wait(0, 0, held=True) if run.held else None
        return JobState.QUEUED

    return _apply(store, name, run_id, Event.RELAUNCH, step)


def _scheduler_wait(view: ClusterState) -> Wait:
    reason = view.reason or view.state
    return Wait(needed=0, free=0, scheduler=view.scheduler, reason=reason, held=view.held)


def observe(store: Store, name: str, run_id: str, view: ClusterState) -> bool:
    """Take in a scheduler's view of an active run: why it waits, that it runs, a requeue."""

    def step(run: Run) -> JobState | None:
        known = run.cluster.restarts if run.cluster else 0
        if view.restarts < known:
            return None  # an answer from before the last requeue
        if not view.verdict.active:
            return None  # an end is the scheduler's verdict: end_by_cluster
        if view.verdict is JobState.QUEUED:
            if run.state is not JobState.QUEUED and view.restarts <= known:
                # Queued again after it ran means requeued, which counts a restart: a view
                # without one is older than the runner's start (answers are kept a moment).
                return None
            # Held there or not is the scheduler's to say (a hold of its own, or a release).
            run.held, run.wait = view.held, _scheduler_wait(view)
        else:  # running, or suspended there (paused): a run that started is not held
            run.held, run.wait = False, None
        run.cluster = view
        return view.verdict

    return _apply(store, name, run_id, Event.OBSERVE, step)


def requeue(store: Store, name: str, run_id: str) -> bool:
    """Running -> queued: the job side had the scheduler requeue it; the same run starts again."""

    def step(run: Run) -> JobState | None:
        if run.cluster is not None:
            # A requeue counts one restart: answers given before it are recognised as old.
            run.cluster = replace(
                run.cluster,
                state=REQUEUED,
                verdict=JobState.QUEUED,
                reason=None,
                restarts=run.cluster.restarts + 1,
            )
            run.wait = _scheduler_wait(run.cluster)
        else:
            run.wait = None
        return JobState.QUEUED

    return _apply(store, name, run_id, Event.REQUEUE, step)


def end_by_cluster(
    store: Store, name: str, run_id: str, view: ClusterState, outcome: Outcome | None
) -> bool:
    """The scheduler ended the run: its verdict decides, with the job side's outcome if any.

    ``outcome`` is what the runner saw when the scheduler signalled the job (its exit code or
    signal); which kind of end it was (a cancel, the time limit) is the scheduler's to say.
    """
    target = _target(store, name, run_id)
    after = target[0].spec.after if target is not None else ()

    def step(run: Run) -> JobState | None:
        if view.verdict.active:
            return None  # not an end: observe takes it
        run.cluster = view
        if outcome is not None:
            _ended(run, outcome)
        else:
            if run.started_at is not None:  # one that never started has no exit code
                run.exit_code, run.signal = view.exit_code, view.signal
            run.ended_at, run.wait = run.ended_at or utcnow(), None
        if run.stop_requested:
            return JobState.STOPPED
        if run.started_at is None and after and view.dependency_failed:
            # A job it was to start after did not succeed and the scheduler cancelled it:
            # it failed to start, as on this machine.
            run.reason = Reason(LostKind.DEPENDENCY_FAILED, "did not succeed", job=", ".join(after))
            return JobState.FAILED
        ran = view.verdict in (JobState.FAILED, JobState.SUCCEEDED)
        if ran and run.started_at is None and outcome is None:
            # The scheduler ran it and it ended, but its runner never said it began: the node
            # could not reach the job's folder (not shared), or the runner failed at once.
            word = f"{view.state} ({view.reason})" if view.reason else view.state
            run.exit_code, run.signal = None, None
            run.reason = Reason(LostKind.NO_JOB_SIDE, detail=word)
            return JobState.FAILED
        if view.verdict in (JobState.FAILED, JobState.STOPPED) or (
            view.verdict is JobState.SUCCEEDED and run.state is JobState.RUNNING
        ):
            return view.verdict
        # Ended with no outcome of the job side's (what it saw as its node went is not it).
        run.exit_code, run.signal = None, None
        run.reason = Reason(LostKind.CLUSTER_ENDED, detail=view.state)
        return JobState.LOST

    return _apply(store, name, run_id, Event.END_BY_CLUSTER, step)


# ---- the job side's status ---------------------------------------------------------------


def _stale(run: Run | None, status: RunStatus | None) -> bool:
    """The status is of a start before the scheduler requeued the run (it starts again)."""
    view = run.cluster if run is not None else None
    return status is not None and view is not None and status.attempt < view.restarts


def fold_status(store: Store, record: JobRecord, status: RunStatus) -> bool:
    """Apply what the runner wrote (start, outcome, loss) to its run; True when it changed."""
    name, run_id = record.name, status.run_id
    if _stale(record.run_by_id(run_id), status):
        return False
    if status.requeued and status.outcome is None:
        return requeue(store, name, run_id)
    changed = begin(store, name, run_id, status)
    if status.lost is not None:
        changed = lose(store, name, run_id, status.lost, status.outcome) or changed
    elif status.outcome is not None:
        run = (store.get(name) or record).run_by_id(run_id)
        if status.outcome.by_scheduler and run is not None and not run.stop_requested:
            return changed  # the scheduler's view says what kind of end it was (reconcile)
        changed = finish(store, name, run_id, status.outcome) or changed
    return changed


def reconcile(store: Store, record: JobRecord, probe: Probe, root: Path) -> bool:
    """Bring one job's active run up to date with its runner; True when the record changed.

    A run takes the outcome its runner recorded. A run whose runner is gone without one is
    ``lost`` (runner killed, machine rebooted); its leftover processes are named in the reason.
    """
    run = record.current
    if not run.state.active:
        return False
    status = read_status(record.name, run.run_id, root)
    changed = fold_status(store, record, status) if status else False
    run = (store.get(record.name) or record).current
    if not run.state.active:
        return changed
    if probe.queues:
        return _reconcile_cluster(store, record.name, run, probe, root) or changed
    boot = paths.boot_id()
    if run.boot_id and boot and run.boot_id != boot:
        # One that had not begun still waits its turn: a new runner takes it (the caller).
        if relaunch(store, record.name, run.run_id, boot):
            return True
        return lose(store, record.name, run.run_id, Reason(LostKind.REBOOT)) or changed
    if run.runner is None or probe.runner_alive(run):
        return changed
    # The runner may have written its outcome just before it went away.
    status = read_status(record.name, run.run_id, root)
    if status is not None and fold_status(store, record, status):
        changed = True
        run = (store.get(record.name) or record).current
        if not run.state.active:
            return True
    if run.stop_requested:  # stopped by the user, and the runner went before recording it
        return cancel(store, record.name, run.run_id) or changed
    reason = Reason(LostKind.RUNNER_DIED, pids=probe.leftover_pids(run))
    return lose(store, record.name, run.run_id, reason) or changed


def _reconcile_cluster(store: Store, name: str, run: Run, probe: Probe, root: Path) -> bool:
    """A run queued by a cluster's scheduler: its view decides where the job side is silent."""
    view = probe.observe(run)
    if view is None:
        return False  # the scheduler cannot be asked now: keep what we know
    if view.verdict.active:
        return observe(store, name, run.run_id, view)
    # It ended. The runner may have recorded the outcome just now (a shared file system can
    # show it late): take it if it is a plain one, else the scheduler's verdict with it.
    status = read_status(name, run.run_id, root)
    status = None if _stale(run, status) else status
    outcome = None
    changed = False
    if status is not None and not status.requeued and status.outcome is not None:
        if not status.outcome.by_scheduler:
            record = store.get(name)
            if record is not None and fold_status(store, record, status):
                return True
        outcome = status.outcome
        # Its start first (seen only now, maybe): a run that began ends from running.
        changed = begin(store, name, run.run_id, status)
    return end_by_cluster(store, name, run.run_id, view, outcome) or changed
