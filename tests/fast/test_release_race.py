"""A release its cluster's scheduler acts on at once is a release, not an error.

Found on the local Slurm: ``scontrol release`` was answered, Slurm started the job within 5 ms,
and ``handyjobs release`` then looked again, saw it running and said it could not release a
job that runs (exit 1), though the release had done what was asked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import FakeBackend, make_record, make_run, view

from handyjobs.backends import base
from handyjobs.core import queueing, registry
from handyjobs.core.records import JobState, Run, Wait
from handyjobs.errors import JobStateError

Q, R = JobState.QUEUED, JobState.RUNNING


class _Scheduler(FakeBackend):
    """A cluster's scheduler that starts a job the moment it is released, or never."""

    starts_at_once: bool = True
    holds: list[bool]

    def hold(self, run: Run, held: bool) -> None:
        self.holds.append(held)
        if not held and self.starts_at_once:
            self.script(view(R, "RUNNING", nodes="n1"))


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> _Scheduler:
    monkeypatch.setenv("HANDYJOBS_HOME", str(tmp_path))
    backend = _Scheduler(queues=True)
    backend.holds = []
    backend.script(view(Q, "PENDING", "JobHeldUser", held=True))
    monkeypatch.setattr(base, "get", lambda name: backend)
    held = make_run(Q, boot_id=None, held=True, wait=Wait(0, 0, held=True))
    with registry.locked(tmp_path) as reg:
        reg.put(make_record("later", held, root=tmp_path))
    return backend


def test_a_release_the_scheduler_starts_at_once_is_a_release(cluster: _Scheduler) -> None:
    record = queueing.release_job("later")
    assert cluster.holds == [False]
    assert record.state is R and not record.current.held
    assert record.current.wait is None


def test_a_release_that_leaves_it_waiting_is_a_release_too(cluster: _Scheduler) -> None:
    cluster.starts_at_once = False

    def released(run: Run, held: bool) -> None:
        cluster.holds.append(held)
        cluster.script(view(Q, "PENDING", "Priority"))

    cluster.hold = released  # type: ignore[method-assign]
    record = queueing.release_job("later")
    assert record.state is Q and not record.current.held


def test_a_hold_of_a_job_that_started_meanwhile_is_refused_and_undone(
    cluster: _Scheduler,
) -> None:
    cluster.script(view(Q, "PENDING", "Priority"))
    with registry.locked() as reg:  # a job that waits, not held
        record = reg.get("later")
        assert record is not None
        record.current.held, record.current.wait = False, None
        reg.put(record)

    def held_then_started(run: Run, held: bool) -> None:
        cluster.holds.append(held)
        cluster.script(view(R, "RUNNING", nodes="n1"))

    cluster.hold = held_then_started  # type: ignore[method-assign]
    with pytest.raises(JobStateError):
        queueing.hold_job("later")
    assert cluster.holds == [True, False]  # the hold must not outlive the start there
