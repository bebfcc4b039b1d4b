"""The lifecycle on the in-memory backend: every row of its table, refusals, reconcile, races.

No tmux, no scheduler, no processes: the backend is :class:`fakes.FakeBackend`, the registry a
:class:`fakes.MemoryStore`, and the runner's status files real files in a temp folder.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from pathlib import Path

import pytest
from fakes import (
    FakeBackend,
    MemoryStore,
    make_record,
    make_run,
    outcome,
    status_of,
    view,
    write_status,
)

from handyjobs.core import lifecycle, paths, scheduler
from handyjobs.core.booking import Limits
from handyjobs.core.lifecycle import TABLE, Event
from handyjobs.core.records import (
    JobRecord,
    JobSpec,
    JobState,
    LostKind,
    ProcId,
    Reason,
    Run,
    Wait,
    exit_summary,
    utcnow,
)
from handyjobs.gpus.discovery import Discovery, GpuInfo
from handyjobs.structs import replace
from handyjobs.views import render

Q, R, P = JobState.QUEUED, JobState.RUNNING, JobState.PAUSED
OK, FAILED, STOPPED, LOST = JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED, JobState.LOST
NAME = "job"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The state folder the runner's status files go to."""
    return tmp_path / "state"


def one_job(root: Path, run: Run, spec: JobSpec | None = None) -> MemoryStore:
    """A store holding one job whose current run is ``run``."""
    return MemoryStore([make_record(NAME, run, spec=spec, root=root)])


# ---- every row of the table ----------------------------------------------------------------

Act = Callable[[MemoryStore, str], bool]
Check = Callable[[Run], object]

STARTED: dict[str, object] = {"started_at": "2024-01-01T00:00:00Z"}
NOT_STARTED: dict[str, object] = {"started_at": None}
RUNNING_VIEW: dict[str, object] = {"cluster": view(R, "RUNNING")}


def _begin(started: bool) -> Act:
    def act(store: MemoryStore, run_id: str) -> bool:
        run = store.run(NAME)
        extra = {"started_at": utcnow(), "main": ProcId(77, 9)} if started else {}
        return lifecycle.begin(store, NAME, run_id, status_of(run, **extra))

    return act


#: (from, event, to) -> (fields of the run before, what to do, what must hold after).
ROWS: dict[tuple[JobState, Event, JobState], tuple[dict[str, object], Act, Check]] = {
    (Q, Event.GRANT, R): (
        {},
        lambda s, i: lifecycle.grant(s, NAME, i, (1,)),
        lambda run: run.gpus == (1,) and run.wait is None,
    ),
    (Q, Event.SET_WAIT, Q): (
        {},
        lambda s, i: lifecycle.set_wait(s, NAME, i, Wait(needed=1, free=0)),
        lambda run: run.wait == Wait(needed=1, free=0),
    ),
    (Q, Event.BEGIN, Q): (
        {"runner": None},
        _begin(started=False),
        lambda run: run.runner == ProcId(4242, 1) and run.started_at is None,
    ),
    (Q, Event.BEGIN, R): ({}, _begin(started=True), lambda run: run.started_at is not None),
    (R, Event.BEGIN, R): (
        {},
        _begin(started=True),
        lambda run: run.main == ProcId(77, 9) and run.started_at is not None,
    ),
    (Q, Event.REQUEST_STOP, Q): (
        {},
        lambda s, i: lifecycle.request_stop(s, NAME, i),
        lambda run: run.stop_requested,
    ),
    (R, Event.REQUEST_STOP, R): (
        STARTED,
        lambda s, i: lifecycle.request_stop(s, NAME, i),
        lambda run: run.stop_requested,
    ),
    (Q, Event.OBSERVE, Q): (
        {},
        lambda s, i: lifecycle.observe(s, NAME, i, view(Q, "PENDING", "Priority")),
        lambda run: run.wait is not None and run.wait.reason == "Priority",
    ),
    (Q, Event.OBSERVE, R): (
        {},
        lambda s, i: lifecycle.observe(s, NAME, i, view(R, "RUNNING", nodes="n1")),
        lambda run: run.cluster is not None and run.cluster.nodes == "n1",
    ),
    (R, Event.OBSERVE, R): (
        RUNNING_VIEW,
        lambda s, i: lifecycle.observe(s, NAME, i, view(R, "RUNNING", nodes="n2")),
        lambda run: run.cluster is not None and run.cluster.nodes == "n2",
    ),
    (R, Event.OBSERVE, Q): (
        RUNNING_VIEW,
        lambda s, i: lifecycle.observe(s, NAME, i, view(Q, "PENDING", "BeginTime", restarts=1)),
        lambda run: run.cluster is not None and run.cluster.restarts == 1,
    ),
    (R, Event.OBSERVE, P): (
        {**STARTED, **RUNNING_VIEW},
        lambda s, i: lifecycle.observe(s, NAME, i, view(P, "SUSPENDED")),
        lambda run: run.cluster is not None and run.cluster.state == "SUSPENDED",
    ),
    (P, Event.OBSERVE, P): (
        {**STARTED, **RUNNING_VIEW},
        lambda s, i: lifecycle.observe(s, NAME, i, view(P, "SUSPENDED", nodes="n2")),
        lambda run: run.cluster is not None and run.cluster.nodes == "n2",
    ),
    (P, Event.OBSERVE, R): (
        {**STARTED, "cluster": view(P, "SUSPENDED")},
        lambda s, i: lifecycle.observe(s, NAME, i, view(R, "RUNNING")),
        lambda run: run.cluster is not None and run.cluster.state == "RUNNING",
    ),
    (P, Event.OBSERVE, Q): (
        {**STARTED, "cluster": view(P, "SUSPENDED")},
        lambda s, i: lifecycle.observe(s, NAME, i, view(Q, "PENDING", "BeginTime", restarts=1)),
        lambda run: run.cluster is not None and run.cluster.restarts == 1,
    ),
    (R, Event.REQUEUE, Q): (
        {**STARTED, **RUNNING_VIEW},
        lambda s, i: lifecycle.requeue(s, NAME, i),
        lambda run: (
            run.cluster is not None
            and (run.cluster.restarts, run.cluster.state) == (1, lifecycle.REQUEUED)
        ),
    ),
    (R, Event.FINISH, OK): (
        STARTED,
        lambda s, i: lifecycle.finish(s, NAME, i, outcome(0)),
        lambda run: run.exit_code == 0 and run.ended_at is not None,
    ),
    (R, Event.FINISH, FAILED): (
        STARTED,
        lambda s, i: lifecycle.finish(s, NAME, i, outcome(None, 9)),
        lambda run: run.signal == 9,
    ),
    (R, Event.FINISH, STOPPED): (
        {**STARTED, "stop_requested": True},
        lambda s, i: lifecycle.finish(s, NAME, i, outcome(None, 15)),
        lambda run: run.signal == 15,
    ),
    (Q, Event.CANCEL, STOPPED): (
        {"stop_requested": True},
        lambda s, i: lifecycle.cancel(s, NAME, i),
        lambda run: run.ended_at is not None,
    ),
    (R, Event.CANCEL, STOPPED): (
        {**STARTED, "stop_requested": True},
        lambda s, i: lifecycle.cancel(s, NAME, i),
        lambda run: run.ended_at is not None,
    ),
    (Q, Event.FAIL_TO_START, FAILED): (
        {},
        lambda s, i: lifecycle.fail_to_start(s, NAME, i, Reason(LostKind.START_FAILED, "x")),
        lambda run: run.reason == Reason(LostKind.START_FAILED, "x"),
    ),
    (Q, Event.FAIL_TO_START, STOPPED): (
        {"stop_requested": True},
        lambda s, i: lifecycle.fail_to_start(s, NAME, i, Reason(LostKind.START_FAILED, "x")),
        lambda run: run.ended_at is not None,
    ),
    (R, Event.FAIL_TO_START, FAILED): (
        NOT_STARTED,
        lambda s, i: lifecycle.fail_to_start(s, NAME, i, Reason(LostKind.START_FAILED, "env")),
        lambda run: run.reason is not None and run.reason.detail == "env",
    ),
    (R, Event.FAIL_TO_START, STOPPED): (
        {**NOT_STARTED, "stop_requested": True},
        lambda s, i: lifecycle.fail_to_start(s, NAME, i, Reason(LostKind.START_FAILED, "env")),
        lambda run: run.ended_at is not None,
    ),
    (Q, Event.LOSE, LOST): (
        {},
        lambda s, i: lifecycle.lose(s, NAME, i, Reason(LostKind.SESSION_GONE)),
        lambda run: run.reason == Reason(LostKind.SESSION_GONE),
    ),
    (R, Event.LOSE, LOST): (
        STARTED,
        lambda s, i: lifecycle.lose(s, NAME, i, Reason(LostKind.RUNNER_DIED, pids=(5,))),
        lambda run: run.reason == Reason(LostKind.RUNNER_DIED, pids=(5,)),
    ),
    (Q, Event.END_BY_CLUSTER, FAILED): (
        {},
        lambda s, i: lifecycle.end_by_cluster(s, NAME, i, view(FAILED, "BOOT_FAIL"), None),
        lambda run: run.started_at is None and run.exit_code is None,
    ),
    (Q, Event.END_BY_CLUSTER, STOPPED): (
        {},
        lambda s, i: lifecycle.end_by_cluster(s, NAME, i, view(STOPPED, "CANCELLED"), None),
        lambda run: run.cluster is not None and run.cluster.state == "CANCELLED",
    ),
    (Q, Event.END_BY_CLUSTER, LOST): (
        {},
        lambda s, i: lifecycle.end_by_cluster(s, NAME, i, view(LOST, "NODE_FAIL"), None),
        lambda run: run.reason == Reason(LostKind.CLUSTER_ENDED, "NODE_FAIL"),
    ),
    (R, Event.END_BY_CLUSTER, OK): (
        STARTED,
        lambda s, i: lifecycle.end_by_cluster(s, NAME, i, view(OK, "COMPLETED", exit_code=0), None),
        lambda run: run.exit_code == 0,
    ),
    (R, Event.END_BY_CLUSTER, FAILED): (
        STARTED,
        lambda s, i: lifecycle.end_by_cluster(s, NAME, i, view(FAILED, "TIMEOUT"), None),
        lambda run: run.cluster is not None and run.cluster.state == "TIMEOUT",
    ),
    (R, Event.END_BY_CLUSTER, STOPPED): (
        STARTED,
        lambda s, i: lifecycle.end_by_cluster(
            s, NAME, i, view(STOPPED, "CANCELLED"), outcome(None, 15, by_scheduler=True)
        ),
        lambda run: run.signal == 15,
    ),
    (R, Event.END_BY_CLUSTER, LOST): (
        STARTED,
        lambda s, i: lifecycle.end_by_cluster(s, NAME, i, view(LOST, "NODE_FAIL"), None),
        lambda run: run.reason is not None and run.reason.kind is LostKind.CLUSTER_ENDED,
    ),
    (P, Event.END_BY_CLUSTER, FAILED): (
        STARTED,
        lambda s, i: lifecycle.end_by_cluster(s, NAME, i, view(FAILED, "PREEMPTED"), None),
        lambda run: run.cluster is not None and run.cluster.state == "PREEMPTED",
    ),
    (P, Event.END_BY_CLUSTER, STOPPED): (
        STARTED,
        lambda s, i: lifecycle.end_by_cluster(s, NAME, i, view(STOPPED, "CANCELLED"), None),
        lambda run: run.ended_at is not None,
    ),
    (P, Event.END_BY_CLUSTER, LOST): (
        STARTED,
        lambda s, i: lifecycle.end_by_cluster(s, NAME, i, view(LOST, "NODE_FAIL"), None),
        lambda run: run.reason is not None and run.reason.kind is LostKind.CLUSTER_ENDED,
    ),
    (LOST, Event.CLEAN, LOST): (
        {"reason": Reason(LostKind.RUNNER_DIED, pids=(5, 6))},
        lambda s, i: lifecycle.cleaned(s, NAME, i, (5, 6)),
        lambda run: run.reason is not None and run.reason.pids == () and run.leftovers == 2,
    ),
    (R, Event.PAUSE, P): (
        {**STARTED, "gpus": (1,)},
        lambda s, i: lifecycle.pause(s, NAME, i),
        lambda run: run.gpus == (1,) and run.ended_at is None,  # its GPUs stay booked
    ),
    (P, Event.RESUME, R): (
        STARTED,
        lambda s, i: lifecycle.pause(s, NAME, i, paused=False),
        lambda run: run.ended_at is None and not run.stop_requested,
    ),
    (P, Event.REQUEST_STOP, P): (
        STARTED,
        lambda s, i: lifecycle.request_stop(s, NAME, i),
        lambda run: run.stop_requested,
    ),
    (P, Event.FINISH, OK): (
        STARTED,
        lambda s, i: lifecycle.finish(s, NAME, i, outcome(0)),
        lambda run: run.exit_code == 0 and run.ended_at is not None,
    ),
    (P, Event.FINISH, FAILED): (
        STARTED,
        lambda s, i: lifecycle.finish(s, NAME, i, outcome(None, 9)),
        lambda run: run.signal == 9,
    ),
    (P, Event.FINISH, STOPPED): (
        {**STARTED, "stop_requested": True},
        lambda s, i: lifecycle.finish(s, NAME, i, outcome(None, 15)),
        lambda run: run.signal == 15,
    ),
    (P, Event.CANCEL, STOPPED): (
        {**STARTED, "stop_requested": True},
        lambda s, i: lifecycle.cancel(s, NAME, i),
        lambda run: run.ended_at is not None,
    ),
    (P, Event.LOSE, LOST): (
        STARTED,
        lambda s, i: lifecycle.lose(s, NAME, i, Reason(LostKind.REBOOT)),
        lambda run: run.reason == Reason(LostKind.REBOOT),
    ),
    (Q, Event.HOLD, Q): (
        {"wait": Wait(needed=1, free=0, position=1)},
        lambda s, i: lifecycle.hold(s, NAME, i),
        lambda run: run.held and run.wait == Wait(0, 0, held=True),
    ),
    (Q, Event.RELEASE, Q): (
        {"held": True, "wait": Wait(0, 0, held=True)},
        lambda s, i: lifecycle.hold(s, NAME, i, held=False),
        lambda run: not run.held and run.wait is None,
    ),
    (Q, Event.EDIT, Q): (
        {"wait": Wait(needed=1, free=0, position=2)},
        lambda s, i: lifecycle.edit(s, NAME, i, nproc=4),
        lambda run: run.nproc == 4 and run.wait is None,
    ),
    (Q, Event.RELAUNCH, Q): (
        {"boot_id": "boot-before", "handle": {"session": NAME}},
        lambda s, i: lifecycle.relaunch(s, NAME, i, "boot-now"),
        lambda run: run.boot_id == "boot-now" and run.runner is None and run.handle == {},
    ),
    (R, Event.RELAUNCH, Q): (
        {**NOT_STARTED, "boot_id": "boot-before", "gpus": (1,)},
        lambda s, i: lifecycle.relaunch(s, NAME, i, "boot-now"),
        lambda run: run.gpus == () and run.runner is None and run.boot_id == "boot-now",
    ),
}

TABLE_ROWS = sorted(
    ((src, event, dst) for (src, event), tos in TABLE.items() for dst in tos), key=str
)


def test_every_row_of_the_table_is_tested_here_and_says_what_it_means() -> None:
    assert set(ROWS) == set(TABLE_ROWS)
    for (src, event), tos in TABLE.items():
        assert isinstance(event, Event)
        for dst, means in tos.items():
            assert means.strip(), f"row {src.value} -{event.value}-> {dst.value} says nothing"


@pytest.mark.parametrize("row", TABLE_ROWS, ids=lambda r: f"{r[0].value}-{r[1].value}-{r[2].value}")
def test_each_row_moves_the_run_as_it_says(
    root: Path, row: tuple[JobState, Event, JobState]
) -> None:
    before, act, check = ROWS[row]
    src, _, dst = row
    run = make_run(src, before)
    store = one_job(root, run)
    assert act(store, run.run_id) is True
    after = store.run(NAME)
    assert after.state is dst
    assert check(after), f"{row}: {after}"
    assert store.puts == 1


# ---- what the table refuses ----------------------------------------------------------------


def _refused(store: MemoryStore, act: Callable[[], bool]) -> None:
    before = store.records()
    assert act() is False
    assert store.records() == before
    assert store.puts == 0


ENDS = (OK, FAILED, STOPPED, LOST)


@pytest.mark.parametrize("end", ENDS, ids=lambda s: s.value)
def test_an_ended_run_takes_no_transition(root: Path, end: JobState) -> None:
    run = make_run(end, started_at=utcnow(), ended_at=utcnow(), exit_code=0)
    store = one_job(root, run)
    i = run.run_id
    for act in (
        lambda: lifecycle.grant(store, NAME, i, (0,)),
        lambda: lifecycle.set_wait(store, NAME, i, Wait(1, 0)),
        lambda: lifecycle.begin(store, NAME, i, status_of(run, started_at=utcnow())),
        lambda: lifecycle.request_stop(store, NAME, i),
        lambda: lifecycle.observe(store, NAME, i, view(R, "RUNNING")),
        lambda: lifecycle.requeue(store, NAME, i),
        lambda: lifecycle.finish(store, NAME, i, outcome(1)),
        lambda: lifecycle.cancel(store, NAME, i),
        lambda: lifecycle.fail_to_start(store, NAME, i, Reason(LostKind.START_FAILED)),
        lambda: lifecycle.lose(store, NAME, i, Reason(LostKind.RUNNER_DIED)),
        lambda: lifecycle.end_by_cluster(store, NAME, i, view(FAILED, "FAILED"), None),
        lambda: lifecycle.pause(store, NAME, i),
        lambda: lifecycle.pause(store, NAME, i, paused=False),
        lambda: lifecycle.hold(store, NAME, i),
        lambda: lifecycle.edit(store, NAME, i, nproc=3),
        lambda: lifecycle.relaunch(store, NAME, i, "boot-later"),
    ):
        _refused(store, act)


def test_a_queued_run_that_never_began_cannot_finish(root: Path) -> None:
    run = make_run(Q)
    store = one_job(root, run)
    _refused(store, lambda: lifecycle.finish(store, NAME, run.run_id, outcome(0)))
    # It ends by the rows that say so: it failed to start.
    why = Reason(LostKind.START_FAILED, "no env file")
    assert lifecycle.fail_to_start(store, NAME, run.run_id, why)
    assert store.run(NAME).state is FAILED


@pytest.mark.parametrize("state", [R, P], ids=lambda s: s.value)
@pytest.mark.parametrize("exit_code", [0, 143])
def test_a_run_ended_by_its_limit_failed_for_it_whatever_its_exit(
    root: Path, state: JobState, exit_code: int
) -> None:
    run = make_run(state, STARTED)
    store = one_job(root, run)
    limit = Reason(LostKind.TIME_LIMIT, "5")
    ended = replace(outcome(exit_code), reason=limit)  # a job that saved and exited 0 too
    assert lifecycle.finish(store, NAME, run.run_id, ended)
    after = store.run(NAME)
    assert (after.state, after.reason, after.exit_code) == (FAILED, limit, exit_code)
    assert exit_summary(after) == "TIMEOUT"


def test_a_stop_asked_before_the_limit_ends_it_stopped(root: Path) -> None:
    run = make_run(P, {**STARTED, "stop_requested": True})
    store = one_job(root, run)
    ended = replace(outcome(None, 15), reason=Reason(LostKind.TIME_LIMIT, "5"))
    assert lifecycle.finish(store, NAME, run.run_id, ended)
    assert store.run(NAME).state is STOPPED


@pytest.mark.parametrize(
    ("state", "fields", "act"),
    [
        (R, STARTED, lambda s, i: lifecycle.grant(s, NAME, i, (0,))),
        (Q, {"stop_requested": True}, lambda s, i: lifecycle.grant(s, NAME, i, (0,))),
        (R, STARTED, lambda s, i: lifecycle.set_wait(s, NAME, i, Wait(1, 0))),
        (Q, {}, lambda s, i: lifecycle.requeue(s, NAME, i)),
        (Q, {"stop_requested": True}, lambda s, i: lifecycle.request_stop(s, NAME, i)),
        (
            R,
            STARTED,
            lambda s, i: lifecycle.fail_to_start(s, NAME, i, Reason(LostKind.START_FAILED)),
        ),
        (R, STARTED, lambda s, i: lifecycle.observe(s, NAME, i, view(FAILED, "FAILED"))),
        (R, STARTED, lambda s, i: lifecycle.end_by_cluster(s, NAME, i, view(R), None)),
        (STOPPED, {}, lambda s, i: lifecycle.cleaned(s, NAME, i, (1,))),
        (Q, {}, lambda s, i: lifecycle.pause(s, NAME, i)),
        (R, STARTED, lambda s, i: lifecycle.pause(s, NAME, i, paused=False)),
        (P, STARTED, lambda s, i: lifecycle.pause(s, NAME, i)),
        (
            P,
            STARTED,
            lambda s, i: lifecycle.begin(s, NAME, i, status_of(make_run(P), started_at=utcnow())),
        ),
        (P, STARTED, lambda s, i: lifecycle.grant(s, NAME, i, (0,))),
    ],
    ids=[
        "grant-running",
        "grant-after-stop",
        "wait-while-running",
        "requeue-queued",
        "stop-twice",
        "fail-to-start-after-begin",
        "observe-an-end",
        "end-by-an-active-view",
        "clean-a-stopped-run",
        "pause-a-queued-run",
        "resume-a-running-run",
        "pause-twice",
        "begin-again-while-paused",
        "grant-a-paused-run",
    ],
)
def test_illegal_transitions_are_refused_and_change_nothing(
    root: Path,
    state: JobState,
    fields: dict[str, object],
    act: Callable[[MemoryStore, str], bool],
) -> None:
    run = make_run(state, fields)
    store = one_job(root, run)
    _refused(store, lambda: act(store, run.run_id))


def test_the_one_helper_refuses_every_change_the_table_lacks(root: Path) -> None:
    def moving_to(dst: JobState) -> Callable[[Run], JobState]:
        return lambda run: dst

    refused = 0
    for src in JobState:
        for event in Event:
            for dst in JobState:
                if (src, event, dst) in ROWS:
                    continue
                run = make_run(src)
                store = one_job(root, run)
                step = moving_to(dst)
                _refused(store, lambda: lifecycle._apply(store, NAME, run.run_id, event, step))  # noqa: B023
                refused += 1
    assert refused == len(JobState) ** 2 * len(Event) - len(ROWS)


def test_state_is_assigned_only_by_the_one_helper_and_no_scheduler_is_named() -> None:
    source = inspect.getsource(lifecycle)
    assert "slurm" not in source.lower()
    writers = set()
    for func in ast.walk(ast.parse(source)):
        if isinstance(func, ast.FunctionDef):
            for node in ast.walk(func):
                targets: list[ast.expr] = []
                if isinstance(node, ast.Assign):
                    targets = node.targets
                elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                    targets = [node.target]
                for target in targets:
                    elts = target.elts if isinstance(target, ast.Tuple) else [target]
                    if any(isinstance(e, ast.Attribute) and e.attr == "state" for e in elts):
                        writers.add(func.name)
    assert writers == {"_apply"}


# ---- reconcile on this machine -------------------------------------------------------------


def test_a_runner_gone_without_an_outcome_is_lost_with_its_leftover_pids(root: Path) -> None:
    run = make_run(R, started_at=utcnow())
    store = one_job(root, run)
    backend = FakeBackend(alive=False, leftovers=(101, 102))
    assert lifecycle.reconcile(store, store.records()[0], backend, root)
    after = store.run(NAME)
    assert after.state is LOST
    assert after.reason == Reason(LostKind.RUNNER_DIED, pids=(101, 102))


def test_a_live_runner_leaves_the_run_as_it_is(root: Path) -> None:
    run = make_run(R, started_at=utcnow())
    store = one_job(root, run)
    assert not lifecycle.reconcile(store, store.records()[0], FakeBackend(alive=True), root)
    assert store.puts == 0


def test_the_outcome_written_on_file_is_taken(root: Path) -> None:
    run = make_run(R)
    store = one_job(root, run)
    write_status(root, NAME, status_of(run, started_at=utcnow(), outcome=outcome(3)))
    assert lifecycle.reconcile(store, store.records()[0], FakeBackend(alive=True), root)
    after = store.run(NAME)
    assert (after.state, after.exit_code) == (FAILED, 3)


def test_an_outcome_written_just_before_the_runner_went_is_that_outcome(root: Path) -> None:
    run = make_run(R, started_at=utcnow())
    store = one_job(root, run)
    backend = FakeBackend(alive=False, leftovers=(101,))
    # The runner records its outcome and exits between the first look at its file and the
    # question whether it is alive.
    backend.meanwhile = lambda r: write_status(
        root, NAME, status_of(r, started_at=r.started_at, outcome=outcome(0))
    )
    assert lifecycle.reconcile(store, store.records()[0], backend, root)
    after = store.run(NAME)
    assert (after.state, after.exit_code, after.reason) == (OK, 0, None)


def test_a_stop_asked_and_the_runner_gone_is_stopped(root: Path) -> None:
    run = make_run(R, started_at=utcnow(), stop_requested=True)
    store = one_job(root, run)
    assert lifecycle.reconcile(store, store.records()[0], FakeBackend(alive=False), root)
    after = store.run(NAME)
    assert after.state is STOPPED and after.ended_at is not None


def test_a_run_of_an_earlier_boot_is_lost_to_the_reboot(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_run(R, boot_id="boot-before", started_at=utcnow())
    store = one_job(root, run)
    monkeypatch.setattr(paths, "boot_id", lambda: "boot-now")
    # The pid may now belong to anything: the runner's liveness is not even asked.
    backend = FakeBackend(alive=True)
    assert lifecycle.reconcile(store, store.records()[0], backend, root)
    after = store.run(NAME)
    assert after.state is LOST and after.reason == Reason(LostKind.REBOOT)


@pytest.mark.parametrize("state", [Q, R], ids=lambda s: s.value)
def test_a_run_that_had_not_begun_waits_again_after_a_reboot_for_a_new_runner(
    root: Path, monkeypatch: pytest.MonkeyPatch, state: JobState
) -> None:
    # Queued, or granted but not begun: the queue survives the restart of the machine.
    run = make_run(state, boot_id="boot-before", gpus=(0,) if state is R else ())
    store = one_job(root, run)
    monkeypatch.setattr(paths, "boot_id", lambda: "boot-now")
    assert lifecycle.reconcile(store, store.records()[0], FakeBackend(alive=False), root)
    after = store.run(NAME)
    assert after.state is Q and after.reason is None
    assert (after.boot_id, after.runner, after.gpus) == ("boot-now", None, ())


def test_a_held_run_stays_out_of_the_queue_and_a_stopping_one_cannot_be_held(root: Path) -> None:
    held = make_run(Q, held=True, wait=Wait(0, 0, held=True), backend="tmux")
    free = make_run(Q, run_id="other0000001", backend="tmux")
    store = MemoryStore([make_record(NAME, held, root=root), make_record("free", free, root=root)])
    assert scheduler.schedule(store, store.records(), None) == ["free"]
    assert store.run(NAME).state is Q and store.run(NAME).wait == Wait(0, 0, held=True)
    stopping = one_job(root, make_run(Q, stop_requested=True))
    _refused(stopping, lambda: lifecycle.hold(stopping, NAME, stopping.run(NAME).run_id))


def test_a_run_of_this_boot_is_not_lost_to_a_reboot(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_run(R, boot_id="boot-now")
    store = one_job(root, run)
    monkeypatch.setattr(paths, "boot_id", lambda: "boot-now")
    assert not lifecycle.reconcile(store, store.records()[0], FakeBackend(alive=True), root)


def test_a_cluster_run_outlives_a_reboot_of_the_machine_that_submitted_it(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_run(R, boot_id=None, cluster=view(R, "RUNNING"))
    store = one_job(root, run)
    monkeypatch.setattr(paths, "boot_id", lambda: "boot-now")
    backend = FakeBackend(queues=True, views=[view(R, "RUNNING")])
    assert not lifecycle.reconcile(store, store.records()[0], backend, root)
    assert store.run(NAME).state is R


# ---- reconcile by a scheduler's view -------------------------------------------------------


def cluster(
    root: Path, run: Run, *views: object, spec: JobSpec | None = None
) -> tuple[MemoryStore, FakeBackend, Callable[[], JobRecord]]:
    """A store, a queueing backend scripted with ``views``, and a reconcile-and-read."""
    store = one_job(root, run, spec)
    backend = FakeBackend(queues=True)
    backend.script(*views)  # type: ignore[arg-type]

    def step() -> JobRecord:
        record = store.records()[0]
        lifecycle.reconcile(store, record, backend, root)
        return store.records()[0]

    return store, backend, step


def test_pending_with_a_reason_is_queued_with_the_schedulers_wait(root: Path) -> None:
    _, _, step = cluster(root, make_run(Q, boot_id=None), view(Q, "PENDING", "Resources"))
    run = step().current
    assert run.state is Q
    assert run.wait == Wait(0, 0, scheduler="fake", reason="Resources")


def test_suspended_by_the_scheduler_reads_paused_until_it_runs_again(root: Path) -> None:
    run = make_run(P, boot_id=None, started_at=utcnow(), cluster=view(R, "RUNNING"))
    _, _, step = cluster(root, run, view(P, "SUSPENDED"), view(P, "SUSPENDED"), view(R, "RUNNING"))
    assert [step().current.state for _ in range(3)] == [P, P, R]


def test_held_by_the_scheduler_reads_held_until_it_is_released_there(root: Path) -> None:
    held = view(Q, "PENDING", "JobHeldUser", held=True)
    _, _, step = cluster(root, make_run(Q, boot_id=None), held, view(Q, "PENDING", "Priority"))
    run = step().current
    assert run.held and run.wait == Wait(0, 0, scheduler="fake", reason="JobHeldUser", held=True)
    run = step().current  # released there (by hand, or by `release`)
    assert not run.held and run.wait == Wait(0, 0, scheduler="fake", reason="Priority")


def test_a_held_run_its_scheduler_starts_is_held_no_more(root: Path) -> None:
    held = view(Q, "PENDING", "JobHeldUser", held=True)
    _, _, step = cluster(root, make_run(Q, boot_id=None), held, view(R, "RUNNING"))
    assert step().current.held
    run = step().current  # released there, and started before anyone looked
    assert run.state is R and not run.held and run.wait is None


def test_running_by_the_schedulers_word(root: Path) -> None:
    _, _, step = cluster(root, make_run(Q, boot_id=None), view(R, "RUNNING", nodes="n3"))
    run = step().current
    assert run.state is R and run.wait is None
    assert run.cluster is not None and run.cluster.nodes == "n3"


def test_requeued_after_running_counts_a_restart_and_older_answers_are_ignored(
    root: Path,
) -> None:
    _, _, step = cluster(
        root,
        make_run(Q, boot_id=None),
        view(R, "RUNNING"),
        view(Q, "PENDING", "Priority"),  # kept from before it ran: no restart in it
        view(Q, "PENDING", "BeginTime", restarts=1),  # requeued
        view(R, "RUNNING", restarts=0),  # an answer from before the requeue
        view(R, "RUNNING", restarts=1),
    )
    seen = []
    for _ in range(5):
        run = step().current
        seen.append((run.state, run.cluster.restarts if run.cluster else None))
    assert seen == [(R, 0), (R, 0), (Q, 1), (Q, 1), (R, 1)]


@pytest.mark.parametrize(
    ("answer", "state", "kind"),
    [
        (view(OK, "COMPLETED", exit_code=0), OK, None),
        (view(FAILED, "TIMEOUT"), FAILED, None),
        (view(STOPPED, "CANCELLED"), STOPPED, None),
        (view(LOST, "NODE_FAIL"), LOST, LostKind.CLUSTER_ENDED),
    ],
    ids=["completed", "timeout", "cancelled", "node-fail"],
)
def test_ended_by_the_schedulers_verdict(
    root: Path, answer: object, state: JobState, kind: LostKind | None
) -> None:
    run = make_run(R, boot_id=None, started_at=utcnow(), cluster=view(R, "RUNNING"))
    _, _, step = cluster(root, run, answer)
    after = step().current
    assert after.state is state
    assert (after.reason.kind if after.reason else None) is kind
    assert after.ended_at is not None


def test_the_job_sides_plain_outcome_wins_over_the_schedulers_end(root: Path) -> None:
    run = make_run(R, boot_id=None, started_at=utcnow())
    _, _, step = cluster(root, run, view(LOST, "NODE_FAIL"))
    write_status(root, NAME, status_of(run, started_at=run.started_at, outcome=outcome(0)))
    after = step().current
    assert (after.state, after.exit_code) == (OK, 0)


def test_an_end_by_the_scheduler_takes_its_verdict_with_what_the_runner_saw(root: Path) -> None:
    run = make_run(R, boot_id=None, started_at=utcnow())
    _, _, step = cluster(root, run, view(FAILED, "TIMEOUT"))
    seen = outcome(None, 15, by_scheduler=True)
    write_status(root, NAME, status_of(run, started_at=run.started_at, outcome=seen))
    after = step().current
    assert (after.state, after.signal) == (FAILED, 15)


def test_a_start_seen_only_with_the_end_ends_the_run_from_running(root: Path) -> None:
    run = make_run(Q, boot_id=None)
    _, backend, step = cluster(root, run, view(FAILED, "TIMEOUT"))
    seen = outcome(None, 15, by_scheduler=True)
    # The status file shows up (a shared file system) only as the scheduler is asked.
    backend.meanwhile = lambda r: write_status(
        root, NAME, status_of(r, started_at=utcnow(), outcome=seen)
    )
    after = step().current
    assert (after.state, after.signal) == (FAILED, 15)
    assert after.started_at is not None and after.reason is None


def test_a_dependency_that_failed_fails_the_run_never_started(root: Path) -> None:
    answer = view(STOPPED, "CANCELLED", "DependencyNeverSatisfied", dependency_failed=True)
    spec = JobSpec(script="train.py", cpu=True, after=("prep",))
    _, _, step = cluster(root, make_run(Q, boot_id=None), answer, spec=spec)
    after = step().current
    assert after.state is FAILED
    assert after.reason == Reason(LostKind.DEPENDENCY_FAILED, "did not succeed", job="prep")
    assert (after.started_at, after.exit_code) == (None, None)


@pytest.mark.parametrize(
    ("answer", "word"),
    [
        (view(OK, "COMPLETED", exit_code=0), "COMPLETED"),
        (view(FAILED, "FAILED", "JobLaunchFailure"), "FAILED (JobLaunchFailure)"),
    ],
    ids=["completed", "launch-failed"],
)
def test_a_run_whose_runner_never_reported_failed_never_started(
    root: Path, answer: object, word: str
) -> None:
    # The scheduler ran it, but nothing of the job side reached the job's folder.
    _, _, step = cluster(root, make_run(Q, boot_id=None), answer)
    after = step().current
    assert after.state is FAILED
    assert after.reason == Reason(LostKind.NO_JOB_SIDE, word)
    assert (after.started_at, after.exit_code, after.signal) == (None, None, None)
    text = render.reason_text(after.reason)
    assert word in text and "HANDYJOBS_HOME must be a folder every node shares" in text


def test_a_node_failure_before_the_runner_began_is_lost(root: Path) -> None:
    _, _, step = cluster(root, make_run(Q, boot_id=None), view(LOST, "NODE_FAIL"))
    after = step().current
    assert after.state is LOST
    assert after.reason == Reason(LostKind.CLUSTER_ENDED, "NODE_FAIL")


def test_a_stop_asked_reads_stopped_whatever_the_scheduler_says(root: Path) -> None:
    run = make_run(R, boot_id=None, started_at=utcnow(), stop_requested=True)
    _, _, step = cluster(root, run, view(FAILED, "TIMEOUT"))
    assert step().current.state is STOPPED


def test_a_scheduler_that_cannot_be_asked_changes_nothing(root: Path) -> None:
    store, backend, step = cluster(root, make_run(Q, boot_id=None), None)
    assert step().current.state is Q
    assert store.puts == 0 and backend.asked == 1


# ---- races -------------------------------------------------------------------------------


def restarted(root: Path) -> tuple[MemoryStore, Run, Run]:
    """A job whose run 1 was stopped and whose run 2 (the restart) runs."""
    one = make_run(STOPPED, number=1, started_at=utcnow(), ended_at=utcnow(), stop_requested=True)
    two = make_run(R, number=2, started_at=utcnow())
    return MemoryStore([make_record(NAME, one, two, root=root)]), one, two


def test_a_transition_for_an_old_run_id_leaves_the_new_run_alone(root: Path) -> None:
    store, one, _ = restarted(root)
    i = one.run_id
    for act in (
        lambda: lifecycle.request_stop(store, NAME, i),
        lambda: lifecycle.cancel(store, NAME, i),
        lambda: lifecycle.finish(store, NAME, i, outcome(1)),
        lambda: lifecycle.lose(store, NAME, i, Reason(LostKind.RUNNER_DIED)),
        lambda: lifecycle.grant(store, NAME, i, (0,)),
    ):
        _refused(store, act)


def test_a_late_outcome_of_run_1_does_not_land_on_run_2(root: Path) -> None:
    store, one, _ = restarted(root)
    late = status_of(one, started_at=one.started_at, outcome=outcome(0))
    write_status(root, NAME, late)
    record = store.records()[0]
    _refused(store, lambda: lifecycle.fold_status(store, record, late))
    # Reconciling reads run 2's own file (none yet) and finds its runner alive.
    assert not lifecycle.reconcile(store, record, FakeBackend(alive=True), root)
    assert (store.run(NAME, one.run_id).state, store.run(NAME).state) == (STOPPED, R)
    assert store.run(NAME).exit_code is None


def test_a_stale_answer_from_before_a_requeue_is_ignored(root: Path) -> None:
    run = make_run(R, boot_id=None, started_at=utcnow(), cluster=view(R, "RUNNING"))
    _, backend, step = cluster(root, run, view(R, "RUNNING", restarts=0))
    # The job side had the scheduler requeue the run (its time-limit warning came).
    write_status(root, NAME, status_of(run, started_at=run.started_at, requeued=True))
    after = step().current
    assert after.state is Q
    assert after.cluster is not None and after.cluster.restarts == 1
    assert after.wait is not None and after.wait.reason == lifecycle.REQUEUED
    assert backend.asked == 1  # it was asked, and its old "running" was not taken


# ---- the scheduling pass -------------------------------------------------------------------


def gpu(index: int, used_mib: int = 0) -> GpuInfo:
    """A GPU stand-in as discovery reports it."""
    return GpuInfo(index, f"GPU-{index}", "stand-in", used_mib, 80_000, 0)


def queued_job(root: Path, name: str, spec: JobSpec, n: int) -> JobRecord:
    """A queued job, the ``n``-th in this machine's queue (where tmux's runs wait)."""
    run = make_run(Q, run_id=f"{name}-run", created_at=f"2024-01-01T00:00:0{n}Z", backend="tmux")
    return make_record(name, run, spec=spec, root=root)


def test_schedule_grants_free_gpus_in_queue_order_and_says_why_the_rest_wait(root: Path) -> None:
    first = queued_job(root, "first", JobSpec(script="a.py", gpus=(0,)), 1)
    second = queued_job(root, "second", JobSpec(script="b.py", gpus=(0,)), 2)
    other = queued_job(root, "other", JobSpec(script="c.py", gpus=(1,)), 3)
    store = MemoryStore([first, second, other])
    found = Discovery("stand-in", (gpu(0, used_mib=3), gpu(1)))
    granted = scheduler.schedule(store, store.records(), found)
    assert sorted(granted) == ["first", "other"]
    assert store.run("first").gpus == (0,) and store.run("first").state is R
    assert store.run("first").baseline[0].memory_used_mib == 3
    waiting = store.run("second")
    assert waiting.state is Q and waiting.wait is not None
    assert [(b.gpu, b.job) for b in waiting.wait.blockers] == [(0, "first")]


def test_schedule_fails_a_job_whose_dependency_failed_and_keeps_to_the_limit(root: Path) -> None:
    dead = make_record("prep", make_run(FAILED, run_id="prep-run", started_at=utcnow()), root=root)
    child = queued_job(root, "child", JobSpec(script="t.py", cpu=True, after=("prep",)), 1)
    a = queued_job(root, "a", JobSpec(script="a.py", cpu=True), 2)
    b = queued_job(root, "b", JobSpec(script="b.py", cpu=True), 3)
    store = MemoryStore([dead, child, a, b])
    active = [r for r in store.records() if r.state.active]
    assert scheduler.schedule(store, active, None, Limits(total=1)) == ["a"]
    failed = store.run("child")
    assert failed.state is FAILED and failed.started_at is None
    assert failed.reason == Reason(LostKind.DEPENDENCY_FAILED, "failed", job="prep")
    assert store.run("b").wait == Wait(0, 0, position=1, limit=1, running=1)


def test_a_start_before_the_scheduler_requeued_the_run_is_not_its_start(root: Path) -> None:
    # A node failed and the site requeued the job: the first start's status file still says
    # it began (and how its runner saw the end). Until the next start writes its own, the
    # run stays queued, and list says requeued; that start (attempt 1) makes it run.
    run = make_run(R, boot_id=None, started_at=utcnow(), cluster=view(R, "RUNNING"))
    _, _, step = cluster(
        root,
        run,
        view(Q, "PENDING", "BeginTime", restarts=1),
        view(Q, "PENDING", "BeginTime", restarts=1),
        view(R, "RUNNING", restarts=1),
    )
    seen = outcome(0, None, by_scheduler=True)
    write_status(root, NAME, status_of(run, started_at=run.started_at, outcome=seen))
    assert step().current.state is Q
    record = step()  # the old start's file is read again: still queued
    assert record.current.state is Q and render.list_state(record) == "requeued"
    write_status(root, NAME, status_of(run, started_at=utcnow(), attempt=1))
    after = step().current
    assert after.state is R and after.cluster is not None and after.cluster.restarts == 1
