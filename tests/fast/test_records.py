"""Records round-trip through JSON and describe how a run ended."""

from __future__ import annotations

import signal

from handyjobs.core.records import (
    Blocker,
    BlockKind,
    Cost,
    GpuPolicy,
    GpuUse,
    GpuUser,
    JobRecord,
    JobSpec,
    JobState,
    LaunchEnv,
    LostKind,
    Outcome,
    ProcId,
    Reason,
    Run,
    RunStatus,
    Wait,
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
        policy=GpuPolicy((0, 2, 4), 2048),
    )
    run = Run(
        run=1,
        run_id="abc",
        state=JobState.RUNNING,
        created_at=utcnow(),
        gpus=(2, 4),
        nproc=2,
        handle={"session": "exp1", "session_id": "$3"},
        runner=ProcId(10, 1234),
        main=ProcId(11, 1240),
        wait=Wait(
            2, 1, blockers=(Blocker(4, BlockKind.PROCESSES, processes=(GpuUser(7, "bob"),)),)
        ),
        reason=Reason(LostKind.RUNNER_DIED, pids=(12, 13)),
        cost=Cost(12.5, 3 << 30, 2 << 30, (GpuUse(2, 30000, 87.5, 9), GpuUse(4, 29000)), 1, 10, 1),
    )
    return JobRecord(
        name="exp1",
        spec=spec,
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
    assert d["session"] == "exp1" and d["runs"][0]["pids"] == {"runner": 10, "main": 11}
    assert d["wait"]["blockers"][0] == {
        "gpu": 4,
        "kind": "processes",
        "processes": [{"pid": 7, "user": "bob", "name": None}],
    }


def test_status_and_launch_files_round_trip_with_a_schema_version() -> None:
    status = RunStatus(
        run_id="abc",
        runner=ProcId(10, 99),
        boot_id="b",
        main=ProcId(11, 100),
        started_at=utcnow(),
        gpus=(1,),
        outcome=Outcome(
            None, 9, utcnow(), leftovers=2, log_error="disk full", cost=Cost(1.0, 2, 3, (), 4)
        ),
    )
    d = status.to_dict()
    assert d["schema_version"] == 2
    assert RunStatus.from_dict(d) == status
    env = LaunchEnv("exp1", {"A": "1 2", "B": "$x;y"})
    assert LaunchEnv.from_dict(env.to_dict()) == env


def test_cost_json_and_records_without_one() -> None:
    d = _record().to_dict()
    assert d["cost"] == {
        "cpu_time_s": 12.5,
        "peak_rss_bytes": 3 << 30,
        "max_rss_bytes": 2 << 30,
        "gpus": [
            {"index": 2, "peak_memory_mib": 30000, "mean_utilization_pct": 87.5, "samples": 9},
            {"index": 4, "peak_memory_mib": 29000, "mean_utilization_pct": None, "samples": 0},
        ],
        "restarts": 1,
        "samples": 10,
        "interval_s": 1.0,
    }
    assert d["runs"][0]["cost"] == d["cost"]
    del d["runs"][0]["cost"]  # a record written before costs were kept
    assert JobRecord.from_dict(d).current.cost is None


def test_first_release_status_file_still_reads() -> None:
    old = {"run_id": "abc", "pids": {"runner": 5, "main": 6}, "ended_at": "t", "exit_code": 3}
    status = RunStatus.from_dict(old)
    assert status.runner == ProcId(5) and status.main == ProcId(6)
    assert status.outcome is not None and status.outcome.exit_code == 3


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
