"""Every transition of a run, in one place, addressed by run id; and the scheduling pass.

A run's ``state`` is assigned nowhere else. Each transition takes the registry (held under
the lock by the caller), the job's name and the run id the caller read: a stop meant for run
1 can never mark run 2, and a runner that finishes late never touches its successor. A
transition that no longer applies (the run ended meanwhile, the job was removed) changes
nothing and returns False.

::

    queued ──grant──> running ──finish──> succeeded | failed | stopped (stop was requested)
       │                 │
       ├──cancel──> stopped     running/queued ──lose──> lost (runner died, session gone,
       └──fail_to_start──> failed                                reboot; with a reason)

A run that a cluster's scheduler queues (Slurm) also moves by that scheduler's view
(:func:`observe`): queued with its reason, running once it runs, back to queued when it is
requeued (:func:`requeue`), and ended by the scheduler's verdict when the job side could not
say (:func:`end_by_cluster`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

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

if TYPE_CHECKING:
    from handyjobs.core.booking import Limits
    from handyjobs.gpus.discovery import Discovery


class Store(Protocol):
    """Where transitions read and put records: the locked registry, or a scratch copy."""

    def get(self, name: str) -> JobRecord | None:
        """A record by name."""

    def put(self, record: JobRecord) -> None:
        """Keep a changed record."""


class Probe(Protocol):
    """What reconciling asks the run's backend: is the runner there, what of the run is left."""

    #: True when the backend's own scheduler queues runs (its view then decides, not pids).
    queues: bool

    def observe(self, run: Run) -> ClusterState | None:
        """The scheduler's view of the run, or None when it cannot be had now."""

    def runner_alive(self, run: Run) -> bool:
        """True while the run's runner process (or remote allocation) exists."""

    def leftover_pids(self, run: Run) -> tuple[int, ...]:
        """Processes of the run still alive (by marker), for a run being declared lost."""


class Scratch:
    """A :class:`Store` over records read without the lock: finds out whether anything changes."""

    def __init__(self, records: list[JobRecord]) -> None:
        """Index the records by name; :attr:`changed` collects the names put back."""
        self.records = {r.name: r for r in records}
        self.changed: set[str] = set()

    def get(self, name: str) -> JobRecord | None:
        """A record by name."""
        return self.records.get(name)

    def put(self, record: JobRecord) -> None:
        """Keep a changed record."""
        self.records[record.name] = record
        self.changed.add(record.name)


def new_run(record: JobRecord | None, nproc: int, backend: str, local: bool = True) -> Run:
    """A fresh queued run: run 1 of a new job, or the next run of ``record``.

    ``local``: the run lives on this machine, so this boot's id dates its pids (a run on a
    cluster does not end when the machine that submitted it reboots).
    """
    import secrets  # only start and restart need it; list should not pay for the import

    if record is not None and record.current.state.active:
        raise ValueError(f"job {record.name} still has an active run")
    return Run(
        run=1 if record is None else record.current.run + 1,
        run_id=secrets.token_hex(6),
        state=JobState.QUEUED,
        created_at=utcnow(),
        nproc=nproc,
        backend=backend,
        boot_id=paths.boot_id() if local else None,
    )


def _target(store: Store, name: str, run_id: str) -> tuple[JobRecord, Run] | None:
    record = store.get(name)
    if record is None:
        return None
    run = record.run_by_id(run_id)
    return None if run is None else (record, run)


def _change(store: Store, name: str, run_id: str, fn: Callable[[Run], bool]) -> bool:
    """Apply ``fn`` to the run if it exists and is active; put the record when it changed."""
    target = _target(store, name, run_id)
    if target is None:
        return False
    record, run = target
    if not run.state.active or not fn(run):
        return False
    store.put(record)
    return True


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

    def go(run: Run) -> bool:
        if run.state is not JobState.QUEUED or run.stop_requested:
            return False
        run.state, run.gpus, run.wait, run.baseline = JobState.RUNNING, gpus, None, baseline
        return True

    return _change(store, name, run_id, go)


def set_wait(store: Store, name: str, run_id: str, wait: Wait) -> bool:
    """Record why a queued run waits (data); True when that changed."""

    def go(run: Run) -> bool:
        if run.state is not JobState.QUEUED or run.wait == wait:
            return False
        run.wait = wait
        return True

    return _change(store, name, run_id, go)


def begin(store: Store, name: str, run_id: str, status: RunStatus) -> bool:
    """The runner started the command: pids, start time, rendezvous; True when news."""

    def go(run: Run) -> bool:
        before = run.to_dict()
        if status.started_at and run.started_at is None:
            run.started_at = status.started_at
        if status.main is not None:
            run.main = status.main
        if status.runner.pid and (run.runner is None or run.runner.start is None):
            run.runner = status.runner
        if status.rendezvous:
            run.rendezvous = status.rendezvous
        if status.gpus is not None and status.started_at:
            run.gpus = status.gpus
        if status.started_at and run.state is JobState.QUEUED:
            run.state, run.wait = JobState.RUNNING, None
        return run.to_dict() != before

    return _change(store, name, run_id, go)


def _ended(run: Run, outcome: Outcome) -> None:
    run.ended_at = outcome.ended_at
    run.exit_code, run.signal = outcome.exit_code, outcome.signal
    run.leftovers = outcome.leftovers
    run.log_error = outcome.log_error or run.log_error
    run.cost = outcome.cost or run.cost
    run.wait = None


def finish(store: Store, name: str, run_id: str, outcome: Outcome) -> bool:
    """The command ended: succeeded (exit 0), stopped (a stop was asked), or failed."""

    def go(run: Run) -> bool:
        _ended(run, outcome)
        if run.stop_requested:
            run.state = JobState.STOPPED
        elif outcome.exit_code == 0 and outcome.signal is None:
            run.state = JobState.SUCCEEDED
        else:
            run.state = JobState.FAILED
        return True

    return _change(store, name, run_id, go)


def request_stop(store: Store, name: str, run_id: str) -> bool:
    """Mark that the user asked this run to stop (its end will read ``stopped``)."""

    def go(run: Run) -> bool:
        if run.stop_requested:
            return False
        run.stop_requested = True
        return True

    return _change(store, name, run_id, go)


def cancel(store: Store, name: str, run_id: str) -> bool:
    """An active run whose runner is gone after a stop: ``stopped``, now."""

    def go(run: Run) -> bool:
        run.state, run.ended_at, run.wait = JobState.STOPPED, run.ended_at or utcnow(), None
        return True

    return _change(store, name, run_id, go)


def lose(
    store: Store, name: str, run_id: str, reason: Reason, outcome: Outcome | None = None
) -> bool:
    """The run ended with no outcome of its own: ``lost``, with why (and what was left)."""

    def go(run: Run) -> bool:
        if outcome is not None:
            _ended(run, outcome)
        run.state, run.reason = JobState.LOST, reason
        run.ended_at = run.ended_at or utcnow()
        return True

    return _change(store, name, run_id, go)


def fail_to_start(store: Store, name: str, run_id: str, reason: Reason) -> bool:
    """The run could not start its command: ``failed``, with the reason."""

    def go(run: Run) -> bool:
        if run.stop_requested:
            run.state = JobState.STOPPED
        else:
            run.state, run.reason = JobState.FAILED, reason
        run.ended_at, run.wait = utcnow(), None
        return True

    return _change(store, name, run_id, go)


def cleaned(store: Store, name: str, run_id: str, pids: tuple[int, ...]) -> bool:
    """A lost run's leftover processes were ended by ``stop``: the reason says none is left."""
    target = _target(store, name, run_id)
    if target is None:
        return False
    record, run = target
    if run.state is not JobState.LOST or run.reason is None:
        return False
    run.reason = replace(run.reason, pids=())
    run.leftovers = len(pids)
    store.put(record)
    return True


def _scheduler_wait(view: ClusterState) -> Wait:
    return Wait(needed=0, free=0, scheduler=view.scheduler, reason=view.reason or view.state)


def observe(store: Store, name: str, run_id: str, view: ClusterState) -> bool:
    """Take in a scheduler's view of an active run: why it waits, that it runs, a requeue."""

    def go(run: Run) -> bool:
        before = run.to_dict()
        if run.cluster is not None and view.restarts < run.cluster.restarts:
            return False  # an answer from before the last requeue
        if view.verdict is JobState.QUEUED and run.state is JobState.RUNNING:
            # Queued again after it ran: requeued (preempted, its node failed, or our runner
            # asked after the time-limit warning), which counts a restart. A view without a
            # new restart is older than the runner's start (answers are kept a moment): skip it.
            known = run.cluster.restarts if run.cluster else 0
            if view.restarts <= known:
                return False
            run.state = JobState.QUEUED
        if view.verdict is JobState.QUEUED:
            run.wait = _scheduler_wait(view)
        elif view.verdict is JobState.RUNNING and run.state is JobState.QUEUED:
            run.state, run.wait = JobState.RUNNING, None
        run.cluster = view
        return run.to_dict() != before

    return _change(store, name, run_id, go)


def requeue(store: Store, name: str, run_id: str) -> bool:
    """Running -> queued: the job side had the scheduler requeue it; the same run starts again."""

    def go(run: Run) -> bool:
        if run.state is not JobState.RUNNING:
            return False
        run.state = JobState.QUEUED
        if run.cluster is not None:
            # A requeue counts one restart: answers given before it are recognised as old.
            run.cluster = replace(
                run.cluster,
                state="REQUEUED",
                verdict=JobState.QUEUED,
                reason=None,
                restarts=run.cluster.restarts + 1,
            )
            run.wait = _scheduler_wait(run.cluster)
        else:
            run.wait = None
        return True

    return _change(store, name, run_id, go)


def end_by_cluster(
    store: Store, name: str, run_id: str, view: ClusterState, outcome: Outcome | None
) -> bool:
    """The scheduler ended the run: its verdict decides, with the job side's outcome if any.

    ``outcome`` is what the runner saw when the scheduler signalled the job (its exit code or
    signal); which kind of end it was (a cancel, the time limit) is the scheduler's to say.
    """

    target = _target(store, name, run_id)
    after = target[0].spec.after if target is not None else ()

    def go(run: Run) -> bool:
        run.cluster = view
        if outcome is not None:
            _ended(run, outcome)
        else:
            if run.started_at is not None:  # one that never started has no exit code
                run.exit_code, run.signal = view.exit_code, view.signal
            run.ended_at, run.wait = run.ended_at or utcnow(), None
        if run.stop_requested:
            run.state = JobState.STOPPED
        elif run.started_at is None and after and (view.reason or "").startswith("Dependency"):
            # Slurm cancelled it because a job it was to start after did not succeed
            # (--kill-on-invalid-dep): it failed to start, as on this machine.
            run.state = JobState.FAILED
            run.reason = Reason(
                LostKind.DEPENDENCY_FAILED, "did not succeed", job=", ".join(after)
            )
        elif view.verdict in (JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED):
            run.state = view.verdict
        else:
            run.state = JobState.LOST
            run.reason = Reason(LostKind.CLUSTER_ENDED, detail=view.state)
        return True

    return _change(store, name, run_id, go)


# ---- the job side's status ---------------------------------------------------------------


def read_status(name: str, run_id: str, root: Path) -> RunStatus | None:
    """The run's status file, or None when there is none (yet) or it cannot be read.

    The runner may be rewriting it in place (on a full disk): a torn read is read again.
    """
    path = paths.status_path(name, run_id, root)
    for attempt in range(3):
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            status = RunStatus.from_dict(json.loads(data))
        except (ValueError, KeyError, TypeError):
            if attempt < 2:
                time.sleep(0.01)
            continue
        return status if status.run_id == run_id else None
    return None


def fold_status(store: Store, record: JobRecord, status: RunStatus) -> bool:
    """Apply what the runner wrote (start, outcome, loss) to its run; True when it changed."""
    name, run_id = record.name, status.run_id
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
    if view.verdict in (JobState.QUEUED, JobState.RUNNING):
        return observe(store, name, run.run_id, view)
    # It ended. The runner may have recorded the outcome just now (a shared file system can
    # show it late): take it if it is a plain one, else the scheduler's verdict with it.
    status = read_status(name, run.run_id, root)
    outcome = None
    if status is not None and not status.requeued and status.outcome is not None:
        if not status.outcome.by_scheduler:
            record = store.get(name)
            if record is not None and fold_status(store, record, status):
                return True
        outcome = status.outcome
    return end_by_cluster(store, name, run.run_id, view, outcome)


# ---- the queue ---------------------------------------------------------------------------


def schedule(
    store: Store,
    records: list[JobRecord],
    discovery: Discovery | None,
    limits: Limits | None = None,
) -> list[str]:
    """One pass over the queue: grant what can start now, fail what never will, say why the
    rest wait.

    ``records`` are the active records under the lock; dependencies are looked up in
    ``store`` (finished jobs included). Returns the names granted.
    """
    from handyjobs.core import booking

    deps: dict[str, JobState | None] = {}
    for record in records:
        if record.state is JobState.QUEUED:
            for dep in record.spec.after:
                if dep not in deps:
                    found = store.get(dep)
                    deps[dep] = None if found is None else found.state
    result = booking.plan(records, discovery, deps, limits)
    by_name = {r.name: r for r in records}
    granted = []
    for name, gpus in result.starts.items():
        base = baseline(discovery, gpus)
        if grant(store, name, by_name[name].current.run_id, gpus, base):
            granted.append(name)
    for name, wait in result.waits.items():
        set_wait(store, name, by_name[name].current.run_id, wait)
    for name, (dep, state) in result.failed.items():
        why = Reason(LostKind.DEPENDENCY_FAILED, "gone" if state is None else state.value, job=dep)
        fail_to_start(store, name, by_name[name].current.run_id, why)
    return granted


def baseline(discovery: Discovery | None, gpus: tuple[int, ...]) -> tuple[GpuBaseline, ...]:
    """How the GPUs about to be booked look now: memory in use and their processes."""
    if discovery is None or not gpus:
        return ()
    found = discovery.by_index()
    return tuple(
        GpuBaseline(g, found[g].memory_used_mib, tuple(p.pid for p in found[g].processes))
        for g in gpus
        if g in found and found[g].error is None
    )
