"""Records round-trip through JSON and describe how a run ended."""

from __future__ import annotations

import signal

from handyjobs.records import (
    JobRecord,
    JobSpec,
    JobState,
    Run,
    exit_summary,
    parse_time,
    returncode,
    utcnow,
)


def _record() -> JobRecord:
    spec = JobSpec(
        script="/w/train.py",
        args=("--lr", "3e-4", "a b"),
        cwd="/w",
        python="/usr/bin/python3",
        gpus=(2, 4),
        env=(("A", "1"),),
    )
    run = Run(
        run=1,
        run_id="abc",
        state=JobState.RUNNING,
        created_at=utcnow(),
        gpus=(2, 4),
        nproc=2,
        pids={"runner": 10, "main": 11},
    )
    return JobRecord(
        name="exp1",
        spec=spec,
        session="exp1",
        log_path="/s/jobs/exp1/output.log",
        created_at=run.created_at,
        runs=[run],
        git={"commit": "0" * 40, "dirty": True},
    )


def test_record_round_trips_through_json() -> None:
    record = _record()
    again = JobRecord.from_dict(record.to_dict())
    assert again == record
    d = record.to_dict()
    assert list(d)[:2] == ["name", "state"]  # the registry's fast reader relies on this order
    assert d["command"] == "train.py --lr 3e-4 'a b'"  # relative to cwd, as typed
    assert d["gpus"] == [2, 4]


def test_spec_procs_defaults_to_one_per_gpu() -> None:
    assert JobSpec(script="x.py").procs == 1
    assert JobSpec(script="x.py", gpus=(2, 4)).procs == 2
    assert JobSpec(script="x.py", gpus=(2, 4), nproc=1).procs == 1
    assert JobSpec(script="x.py", ngpus=3).procs == 3


def test_exit_summary_and_returncode() -> None:
    run = _record().current
    assert exit_summary(run) == ""
    run.exit_code = 3
    assert (exit_summary(run), returncode(run)) == ("3", 3)
    run.exit_code, run.signal = None, int(signal.SIGTERM)
    assert (exit_summary(run), returncode(run)) == ("SIGTERM", 143)


def test_timestamps_are_utc_iso8601() -> None:
    stamp = utcnow()
    assert stamp.endswith("Z")
    assert parse_time(stamp).utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert JobState.QUEUED.active and not JobState.LOST.active
