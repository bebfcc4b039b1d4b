"""An in-memory backend and store under the lifecycle: its transitions tested in milliseconds.

:class:`FakeBackend` is the backend seam with nothing behind it (as httpx's ``MockTransport``
is for a network): the test says whether the backend queues runs itself, whether the runner
is alive, which processes are left over, and what the scheduler answers, in order. The
status files the runner would write are real files, written by :func:`write_status` where
the lifecycle reads them (``core/paths.py``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from handyjobs.backends.base import Launched, LaunchRequest
from handyjobs.core import paths
from handyjobs.core.procs import Ended
from handyjobs.core.records import (
    ClusterState,
    JobRecord,
    JobSpec,
    JobState,
    Outcome,
    ProcId,
    Run,
    RunStatus,
    utcnow,
)

#: The scheduler name the fake's views carry.
SCHEDULER = "fake"


@dataclass
class FakeBackend:
    """A backend whose runner, leftovers and scheduler are whatever the test says they are."""

    #: True: a scheduler of its own queues the runs, and reconcile asks it (:meth:`observe`).
    queues: bool = False
    #: Whether the runner of every run is still there.
    alive: bool = True
    #: Processes of a run left behind, as the backend would find them by marker.
    leftovers: tuple[int, ...] = ()
    #: The scheduler's answers, one per :meth:`observe`; the last one is given again.
    views: list[ClusterState | None] = field(default_factory=list)
    name: str = "fake"
    launched: list[LaunchRequest] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    #: How many times the scheduler was asked.
    asked: int = 0
    #: Called with the run each time the backend is asked about it: what happens meanwhile
    #: (the runner writes its outcome just as it goes).
    meanwhile: Callable[[Run], object] | None = None

    def script(self, *views: ClusterState | None) -> None:
        """The scheduler's next answers, in order."""
        self.views = list(views)

    def check(self) -> None:
        """Always usable."""

    def session_name(self, wanted: str, run: int, run_id: str) -> str:
        """The name asked for."""
        return wanted

    def launch(self, req: LaunchRequest) -> Launched:
        """Remember the request; the runner counts as alive."""
        self.launched.append(req)
        self.alive = True
        return Launched({"job_id": str(len(self.launched))}, ProcId(4242, 1))

    def runner_alive(self, run: Run) -> bool:
        """What the test set (after what happens meanwhile)."""
        if self.meanwhile is not None:
            self.meanwhile(run)
        return self.alive

    def leftover_pids(self, run: Run) -> tuple[int, ...]:
        """What the test set."""
        return self.leftovers

    def terminate(self, run: Run, grace_s: float) -> Ended:
        """End the leftovers (all of them go)."""
        ended, self.leftovers = self.leftovers, ()
        return Ended(ended, ())

    def end_runner(self, run: Run) -> None:
        """The runner goes."""
        self.alive = False

    def session_alive(self, run: Run) -> bool:
        """The session lives as long as the runner."""
        return self.alive

    def attach_argv(self, run: Run) -> list[str]:
        """Nothing to attach to."""
        return ["true"]

    def send(self, run: Run, text: str) -> None:
        """Remember what was typed."""
        self.sent.append(text)

    def log_path(self, name: str, root: Path) -> Path:
        """The job's log in its folder."""
        return paths.log_path(name, root)

    def observe(self, run: Run) -> ClusterState | None:
        """The next scripted answer (None: the scheduler cannot be asked)."""
        self.asked += 1
        if self.meanwhile is not None:
            self.meanwhile(run)
        if not self.views:
            return None
        return self.views.pop(0) if len(self.views) > 1 else self.views[0]


class MemoryStore:
    """A :class:`~handyjobs.core.lifecycle.Store` in memory that keeps copies, as a file does.

    ``get`` hands out a copy: a transition that changes a record without ``put`` changes
    nothing here, so a test sees exactly what a saved registry would hold.
    """

    def __init__(self, records: Iterable[JobRecord] = ()) -> None:
        """Hold ``records`` (copies); :attr:`puts` counts the writes."""
        self._records = {r.name: copy.deepcopy(r) for r in records}
        self.puts = 0

    def get(self, name: str) -> JobRecord | None:
        """A copy of the record of that name."""
        record = self._records.get(name)
        return None if record is None else copy.deepcopy(record)

    def put(self, record: JobRecord) -> None:
        """Keep a copy of the record."""
        self._records[record.name] = copy.deepcopy(record)
        self.puts += 1

    def records(self) -> list[JobRecord]:
        """Copies of every record, by name."""
        return [copy.deepcopy(self._records[n]) for n in sorted(self._records)]

    def run(self, name: str, run_id: str | None = None) -> Run:
        """A job's run (the current one unless ``run_id`` names another)."""
        record = self._records[name]
        run = record.current if run_id is None else record.run_by_id(run_id)
        assert run is not None, f"{name} has no run {run_id}"
        return copy.deepcopy(run)


def make_run(
    state: JobState = JobState.QUEUED,
    fields: Mapping[str, object] | None = None,
    *,
    number: int = 1,
    run_id: str | None = None,
    **kw: object,
) -> Run:
    """A run in ``state`` whose runner is known; ``fields`` and ``kw`` set any other field."""
    run = Run(
        run=number,
        run_id=run_id or f"run{number:08d}",
        state=state,
        created_at=utcnow(),
        backend="fake",
        boot_id=paths.boot_id(),
        runner=ProcId(4242, 1),
    )
    for key, value in {**(fields or {}), **kw}.items():
        assert hasattr(run, key), key
        setattr(run, key, value)
    return run


def make_record(name: str, *runs: Run, spec: JobSpec | None = None, root: Path) -> JobRecord:
    """A job of ``runs`` (the last is current; one queued run when none is given)."""
    return JobRecord(
        name=name,
        spec=spec or JobSpec(script="train.py", cpu=True),
        log_path=str(paths.log_path(name, root)),
        created_at=utcnow(),
        runs=list(runs) or [make_run()],
    )


def status_of(run: Run, **kw: object) -> RunStatus:
    """The status file the runner of ``run`` would write; ``kw`` sets its fields."""
    status = RunStatus(run_id=run.run_id, runner=ProcId(4242, 1), boot_id=run.boot_id)
    for key, value in kw.items():
        assert hasattr(status, key), key
        setattr(status, key, value)
    return status


def write_status(root: Path, name: str, status: RunStatus) -> Path:
    """Write the runner's status file where the lifecycle reads it."""
    path = paths.status_path(name, status.run_id, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    paths.write_atomic(path, json.dumps(status.to_dict()).encode())
    return path


def outcome(
    exit_code: int | None = 0,
    signal: int | None = None,
    by_scheduler: bool = False,
    leftovers: int = 0,
) -> Outcome:
    """An outcome as the runner records it."""
    return Outcome(exit_code, signal, utcnow(), leftovers=leftovers, by_scheduler=by_scheduler)


def view(
    verdict: JobState,
    state: str = "",
    reason: str | None = None,
    restarts: int = 0,
    exit_code: int | None = None,
    dependency_failed: bool = False,
    nodes: str | None = None,
    held: bool = False,
) -> ClusterState:
    """A scheduler's answer in neutral data: its verdict, its own word and reason."""
    return ClusterState(
        scheduler=SCHEDULER,
        job_id="1",
        state=state or verdict.value.upper(),
        verdict=verdict,
        reason=reason,
        nodes=nodes,
        exit_code=exit_code,
        restarts=restarts,
        dependency_failed=dependency_failed,
        held=held,
    )
