"""The registry: layout, fast reads, old files, locking, atomic writes, reconcile."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from handyjobs import paths, registry
from handyjobs.errors import RegistryError
from handyjobs.records import JobRecord, JobSpec, JobState, Run, utcnow

DATA = Path(__file__).parent / "data"


def make_record(
    name: str,
    state: JobState = JobState.SUCCEEDED,
    created: str | None = None,
    run_id: str | None = None,
) -> JobRecord:
    """A plausible record (no process behind it)."""
    stamp = created or utcnow()
    run = Run(
        run=1,
        run_id=run_id or f"id-{name}",
        state=state,
        created_at=stamp,
        started_at=stamp,
        ended_at=None if state.active else stamp,
        exit_code=None if state.active else 0,
    )
    return JobRecord(
        name=name,
        spec=JobSpec(script="/w/train.py", args=("--x", "1"), cwd="/w"),
        session=name,
        log_path=f"/s/jobs/{name}/output.log",
        created_at=stamp,
        runs=[run],
    )


def test_save_writes_valid_private_json_one_record_per_line(tmp_path: Path) -> None:
    reg = registry.Registry()
    for i in range(3):
        reg.put(make_record(f"j{i}"))
    root = paths.ensure_private_dir(tmp_path / "state")
    registry.save(reg, root)
    path = paths.registry_path(root)
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == registry.SCHEMA_VERSION
    assert [j["name"] for j in doc["jobs"]] == ["j0", "j1", "j2"]
    assert len(path.read_text().splitlines()) == 5  # header, three records, closing line
    assert path.stat().st_mode & 0o777 == 0o600
    assert root.stat().st_mode & 0o777 == 0o700
    assert registry.load(root).jobs == reg.jobs


def test_load_recent_parses_only_active_and_latest_finished(tmp_path: Path) -> None:
    reg = registry.Registry()
    reg.put(make_record("old-running", JobState.RUNNING))
    for i in range(50):
        reg.put(make_record(f"done-{i:02d}"))
    reg.put(make_record("queued", JobState.QUEUED))
    registry.save(reg, tmp_path)
    records, total = registry.load_recent(tmp_path, finished=20)
    names = {r.name for r in records}
    assert total == 52
    assert {"old-running", "queued"} <= names
    assert {f"done-{i:02d}" for i in range(30, 50)} <= names
    assert len(names) == 22


def test_load_recent_falls_back_on_hand_formatted_files(tmp_path: Path) -> None:
    shutil.copy(DATA / "registry-v1.json", paths.registry_path(tmp_path))
    records, total = registry.load_recent(tmp_path)
    assert total == 2 and {r.name for r in records} == {"main-1", "exp1"}


def test_old_registry_file_still_loads(tmp_path: Path) -> None:
    shutil.copy(DATA / "registry-v1.json", paths.registry_path(tmp_path))
    reg = registry.load(tmp_path)
    main = reg.jobs["main-1"]
    assert main.state is JobState.SUCCEEDED and len(main.runs) == 2
    assert main.runs[0].exit_code == 1 and main.current.gpus == (2, 4)
    assert reg.jobs["exp1"].spec.env == (("WANDB_MODE", "offline"),)
    assert reg.next_id == 3


def test_newer_or_broken_files_give_a_clear_error(tmp_path: Path) -> None:
    path = paths.registry_path(tmp_path)
    path.write_text('{"schema_version": 99, "jobs": []}')
    with pytest.raises(RegistryError, match="newer handyjobs"):
        registry.load(tmp_path)
    path.write_text('{"schema_version": 1, "jobs": [{"name": ')
    with pytest.raises(RegistryError, match="move it aside"):
        registry.load(tmp_path)


_BUMP = """
import sys
from handyjobs import registry
from handyjobs.records import JobRecord, JobSpec, JobState, Run
root = sys.argv[1]
for i in range(int(sys.argv[2])):
    with registry.locked(__import__("pathlib").Path(root)) as reg:
        name = f"{sys.argv[3]}-{reg.take_id()}"
        run = Run(run=1, run_id=name, state=JobState.SUCCEEDED, created_at="2026-01-01T00:00:00Z")
        reg.put(JobRecord(name=name, spec=JobSpec(script="x.py"), session=name, log_path="l",
                          created_at=run.created_at, runs=[run]))
"""


def test_lock_serialises_read_modify_write_across_processes(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", _BUMP, str(tmp_path), "15", f"p{i}"])
        for i in range(4)
    ]
    assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
    reg = registry.load(tmp_path)
    assert len(reg.jobs) == 60  # no update lost
    assert reg.next_id == 61


_WRITER = """
import sys
from pathlib import Path
from handyjobs import registry
sys.path.insert(0, sys.argv[2])
from test_registry import make_record
root = Path(sys.argv[1])
reg = registry.load(root)
n = len(reg.jobs)
print("ready", flush=True)
while True:
    reg.put(make_record(f"extra-{n}"))
    n += 1
    registry.save(reg, root)
"""


def test_sigkill_mid_write_leaves_a_whole_registry(tmp_path: Path) -> None:
    reg = registry.Registry()
    for i in range(3000):  # big enough that a write takes a while
        reg.put(make_record(f"j{i}"))
    registry.save(reg, tmp_path)
    for delay in (0.05, 0.13, 0.21, 0.37):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path), str(Path(__file__).parent)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        time.sleep(delay)  # let it get somewhere into a write, then kill it mid-flight
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        loaded = registry.load(tmp_path)  # never a half-written file
        assert len(loaded.jobs) >= 3000
    registry.save(registry.load(tmp_path), tmp_path)
    assert not list(tmp_path.glob("registry.json.tmp-*"))  # the killed writers' temps are gone


def _status(root: Path, record: JobRecord, **values: object) -> None:
    paths.ensure_private_dir(paths.job_dir(record.name, root))
    doc = {"run_id": record.current.run_id, **values}
    paths.write_atomic(
        paths.status_path(record.name, record.current.run_id, root), json.dumps(doc).encode()
    )


def test_reconcile_applies_the_runners_outcome(tmp_path: Path) -> None:
    record = make_record("j", JobState.RUNNING)
    _status(
        tmp_path,
        record,
        pids={"runner": 999999999, "main": 999999998},
        started_at=utcnow(),
        ended_at=utcnow(),
        exit_code=3,
        signal=None,
    )
    changed = registry.reconcile([record], lambda: set(), tmp_path)
    assert changed == [record]
    assert record.state is JobState.FAILED and record.current.exit_code == 3


def test_reconcile_marks_lost_when_runner_and_session_are_gone(tmp_path: Path) -> None:
    gone, alive = make_record("gone", JobState.RUNNING), make_record("alive", JobState.RUNNING)
    _status(tmp_path, gone, pids={"runner": 999999999})
    _status(tmp_path, alive, pids={"runner": os.getpid()})  # not a runner: pid check is strict
    changed = registry.reconcile([gone, alive], lambda: {"alive"}, tmp_path)
    assert gone in changed
    assert gone.state is JobState.LOST and gone.current.ended_at
    assert alive.state is JobState.RUNNING


def test_load_one_finds_exactly_that_name(tmp_path: Path) -> None:
    reg = registry.Registry()
    for name in ("exp", "exp1", "exp10", "x-exp1"):
        reg.put(make_record(name))
    registry.save(reg, tmp_path)
    one = registry.load_one("exp1", tmp_path)
    assert one is not None and one.name == "exp1"
    assert registry.load_one("ex", tmp_path) is None
    shutil.copy(DATA / "registry-v1.json", paths.registry_path(tmp_path))  # hand-formatted
    got = registry.load_one("exp1", tmp_path)
    assert got is not None and got.spec.module
