"""A dependency names the run it waits for, bound when the job is queued; a cycle is refused."""

from __future__ import annotations

import pytest
from conftest import make_record

from handyjobs.core import booking
from handyjobs.core.records import JobRecord, JobState
from handyjobs.errors import UsageError
from handyjobs.structs import replace


def _queued(name: str, after: dict[str, JobRecord]) -> JobRecord:
    """A queued job waiting for the current runs of ``after``."""
    record = make_record(name, JobState.QUEUED)
    run = replace(
        record.current, after_runs={dep: rec.current.run_id for dep, rec in after.items()}
    )
    return replace(record, spec=replace(record.spec, after=tuple(after)), runs=[run])


def test_a_bound_dependency_reads_the_state_of_its_own_run() -> None:
    old_b = make_record("b", JobState.RUNNING, run_id="b-old")
    a = _queued("a", {"b": old_b})
    key = booking.dep_key("b", a.current)
    assert key == "b@b-old"
    assert booking.dep_state(key, old_b) is JobState.RUNNING
    # b removed and a new job named b started: a's run is gone, not the new b.
    new_b = make_record("b", JobState.QUEUED, run_id="b-new")
    assert booking.dep_state(key, new_b) is None
    assert booking.dep_state(key, None) is None


def test_a_removed_dependency_fails_its_dependant_in_the_next_pass() -> None:
    old_b = make_record("b", JobState.RUNNING, run_id="b-old")
    a = _queued("a", {"b": old_b})
    new_b = _queued("b", {"a": a})
    deps = {booking.dep_key("b", a.current): booking.dep_state("b@b-old", new_b)}
    deps[booking.dep_key("a", new_b.current)] = a.state
    result = booking.plan([a, new_b], None, deps)
    assert result.failed["a"] == ("b", None)  # its b is gone
    assert "b" in result.waits  # the new b waits for a, which will fail: nothing waits forever


def test_waiting_for_oneself_or_around_a_circle_is_refused() -> None:
    c = make_record("c", JobState.RUNNING)
    b = _queued("b", {"c": c})
    a = _queued("a", {"b": b})
    with pytest.raises(UsageError, match="would wait forever"):
        booking.refuse_cycle("a", "a", [a, b, c])
    # c (restarted and queued) asking to wait for a, which waits for b, which waits for c.
    c_queued = replace(c, runs=[replace(c.current, state=JobState.QUEUED)])
    with pytest.raises(UsageError, match="job a already waits"):
        booking.refuse_cycle("c", "a", [a, b, c_queued])
    # A new job of an old name is not the run the old dependants wait for: no cycle.
    booking.refuse_cycle("d", "a", [a, b, c_queued])
