"""The registry: layout, history, migration, locking that cannot be bypassed, atomic writes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, make_record

from handyjobs.core import paths, registry
from handyjobs.core.records import SCHEMA_VERSION, JobState, Run, utcnow
from handyjobs.errors import RegistryError, UsageError

DATA = REPO / "tests" / "data"


def _fill(root: Path, active: int, finished: int) -> None:
    with registry.locked(root) as reg:
        for i in range(finished):
            reg.put(make_record(f"done{i}"))
        for i in range(active):
            reg.put(make_record(f"live{i}", JobState.RUNNING))


def test_active_in_the_registry_finished_in_the_history(tmp_path: Path) -> None:
    root = tmp_path / "state"
    _fill(root, active=2, finished=3)
    doc = json.loads(paths.registry_path(root).read_text())
    assert doc["schema_version"] == SCHEMA_VERSION == 2
    assert [j["name"] for j in doc["jobs"]] == ["live0", "live1"]
    assert doc["finished"] == 3
    lines = paths.history_path(root).read_text().splitlines()
    assert json.loads(lines[0]) == {"schema_version": 2}
    assert [json.loads(line)["name"] for line in lines[1:]] == ["done0", "done1", "done2"]
    for path in (paths.registry_path(root), paths.history_path(root)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_ending_moves_a_record_to_the_history_and_restarting_brings_it_back(
    tmp_path: Path,
) -> None:
    root = tmp_path / "state"
    _fill(root, active=1, finished=0)
    with registry.locked(root) as reg:
        record = reg.get("live0")
        assert record is not None
        record.current.state = JobState.FAILED  # as lifecycle.finish would
        reg.put(record)
    assert registry.load_active(root) == []
    got = registry.load_one("live0", root)
    assert got is not None and got.state is JobState.FAILED
    with registry.locked(root) as reg:  # a restart: active again, the old line is stale
        record = reg.get("live0")
        assert record is not None
        record.runs.append(Run(2, "run2", JobState.RUNNING, utcnow()))
        reg.put(record)
        assert reg.finished_count == 0
    one = registry.load_one("live0", root)
    assert one is not None and one.state is JobState.RUNNING and len(one.runs) == 2
    records, total = registry.load_recent(root)
    assert [r.name for r in records] == ["live0"] and total == 1
    assert [r.name for r in registry.load_all(root)] == ["live0"]


def test_load_recent_reads_only_the_newest_finished(tmp_path: Path) -> None:
    root = tmp_path / "state"
    _fill(root, active=2, finished=50)
    # A line that is not JSON in the middle would break a full parse: the fast path never
    # reads that far back.
    data = paths.history_path(root).read_bytes().split(b"\n")
    data[5] = b'{"name": "done4", "state": "succeeded", BROKEN'
    paths.history_path(root).write_bytes(b"\n".join(data))
    records, total = registry.load_recent(root, finished=5)
    assert [r.name for r in records] == ["live0", "live1", *(f"done{i}" for i in range(49, 44, -1))]
    assert total == 52


def test_forget_rewrites_the_history(tmp_path: Path) -> None:
    root = tmp_path / "state"
    _fill(root, active=1, finished=4)
    with registry.locked(root) as reg:
        reg.forget("done1")
        reg.forget("done3")
        with pytest.raises(ValueError):
            reg.forget("live0")
    names = [r.name for r in registry.load_all(root)]
    assert names == ["live0", "done0", "done2"]
    assert json.loads(paths.registry_path(root).read_text())["finished"] == 2
    assert registry.load_one("done1", root) is None


def test_forgetting_one_of_many_appends_a_tombstone_and_keeps_every_other_byte(
    tmp_path: Path,
) -> None:
    """rm of one finished job among many writes one short line at the end of the history: it
    neither reads nor rewrites the other records, and the job stays gone after a reload."""
    root = tmp_path / "state"
    _fill(root, active=1, finished=200)
    hist = paths.history_path(root)
    before = hist.read_bytes()
    with registry.locked(root) as reg:
        reg.forget("done7")
    after = hist.read_bytes()
    assert after.startswith(before)
    assert after[len(before) :] == b'{"name": "done7", "removed": true}\n'
    assert registry.load_one("done7", root) is None
    names = [r.name for r in registry.load_all(root)]
    assert "done7" not in names and len(names) == 200
    recent, total = registry.load_recent(root, finished=300)
    assert "done7" not in {r.name for r in recent} and total == 200
    doc = json.loads(paths.registry_path(root).read_text())
    assert doc["finished"] == 199 and doc["removed"] == 1
    with registry.locked(root) as reg:
        assert reg.get("done7") is None and not reg.exists("done7")
        assert reg.get("done8") is not None


def test_a_removed_name_used_again_is_the_new_job_until_removed_again(tmp_path: Path) -> None:
    root = tmp_path / "state"
    _fill(root, active=0, finished=5)
    with registry.locked(root) as reg:
        reg.forget("done2")
    newer = make_record("done2", JobState.FAILED, created="2031-01-01T00:00:00+00:00")
    with registry.locked(root) as reg:
        assert reg.get("done2") is None
        reg.put(newer)
    got = registry.load_one("done2", root)
    assert got is not None and got.state is JobState.FAILED and got.created_at == newer.created_at
    assert [r.name for r in registry.load_all(root)][-1] == "done2"
    assert [r.name for r in registry.load_recent(root, finished=1)[0]] == ["done2"]
    with registry.locked(root) as reg:  # restarted: active again, then removed once ended
        record = reg.get("done2")
        assert record is not None and reg.finished_count == 5
        record.runs.append(Run(2, "run2", JobState.RUNNING, utcnow()))
        reg.put(record)
    with registry.locked(root) as reg:
        record = reg.get("done2")
        assert record is not None
        record.current.state = JobState.SUCCEEDED
        reg.put(record)
        reg.forget("done2")
    assert registry.load_one("done2", root) is None
    assert "done2" not in {r.name for r in registry.load_all(root)}
    assert json.loads(paths.registry_path(root).read_text())["finished"] == 4


def test_the_history_is_compacted_only_when_tombstones_outnumber_kept_records(
    tmp_path: Path,
) -> None:
    root = tmp_path / "state"
    _fill(root, active=1, finished=10)
    hist = paths.history_path(root)
    for i in range(5):  # 5 tombstones for 5 kept records: appended
        with registry.locked(root) as reg:
            reg.forget(f"done{i}")
    lines = hist.read_bytes().splitlines()
    assert len(lines) == 1 + 10 + 5 and lines[-1].endswith(b'"removed": true}')
    with registry.locked(root) as reg:  # the sixth would outnumber the four left: compacted
        reg.forget("done5")
    lines = hist.read_bytes().splitlines()
    assert [json.loads(line).get("name") for line in lines] == [
        None,
        *(f"done{i}" for i in range(6, 10)),
    ]
    assert json.loads(paths.registry_path(root).read_text())["removed"] == 0
    assert [r.name for r in registry.load_all(root)] == [
        "live0",
        "done6",
        "done7",
        "done8",
        "done9",
    ]
    with registry.locked(root) as reg:  # clean of everything leaves the header alone
        for record in reg.finished():
            reg.forget(record.name)
    assert hist.read_bytes() == json.dumps({"schema_version": 2}).encode() + b"\n"
    assert [r.name for r in registry.load_all(root)] == ["live0"]


def test_removed_default_names_are_free_again(tmp_path: Path) -> None:
    root = tmp_path / "state"
    with registry.locked(root) as reg:
        for i in (1, 2, 3):
            reg.put(make_record(f"train-{i}"))
    with registry.locked(root) as reg:
        reg.forget("train-3")
    with registry.locked(root) as reg:
        assert reg.numbers("train") == {1, 2}
        reg.put(make_record("train-3"))
    with registry.locked(root) as reg:
        assert reg.numbers("train") == {1, 2, 3}


def _bytes_read() -> int:
    """Bytes this process has read so far (read and pread calls), as the kernel counts them."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def _history_of(root: Path, count: int) -> None:
    """A history of ``count`` finished jobs old0..oldN, written as an older release left it
    (no index), quickly: one record's line repeated under other names."""
    _fill(root, active=0, finished=1)
    hist = paths.history_path(root)
    line = hist.read_bytes().splitlines()[-1]
    body = b"\n".join(line.replace(b'"done0"', b'"old%d"' % i) for i in range(count))
    hist.write_bytes(json.dumps({"schema_version": 2}).encode() + b"\n" + body + b"\n")
    paths.history_index_path(root).unlink()


def test_one_jobs_lookup_reads_the_index_not_the_history(tmp_path: Path) -> None:
    """Once indexed (by the first rm of an older release's history), finding the oldest job
    of 20,000 reads a small part of the history's size; before, it read it all."""
    root = tmp_path / "state"
    _history_of(root, 20_000)
    size = paths.history_path(root).stat().st_size
    before = _bytes_read()
    assert registry.load_one("old0", root) is not None  # no index: the whole file, from the end
    assert _bytes_read() - before > size * 0.9
    with registry.locked(root) as reg:
        reg.forget("old5")  # rm (never a job's end) indexes the whole history once
    assert paths.history_index_path(root).stat().st_size < size / 20
    before = _bytes_read()
    oldest = registry.load_one("old0", root)
    assert oldest is not None and oldest.name == "old0"
    assert _bytes_read() - before < size / 10
    assert registry.load_one("old5", root) is None and registry.load_one("never", root) is None
    assert registry.load_one("old19999", root) is not None


def test_an_index_that_is_behind_torn_or_another_files_is_worked_around(tmp_path: Path) -> None:
    root = tmp_path / "state"
    _fill(root, active=0, finished=20)
    hist, index = paths.history_path(root), paths.history_index_path(root)
    assert index.read_bytes().count(b"\n") == 21  # a new history is indexed from its first line
    # Lines appended by an older release, not indexed: found at the end, then indexed.
    line = hist.read_bytes().splitlines()[-1]
    with hist.open("ab") as f:
        f.write(line.replace(b'"done19"', b'"older"') + b"\n")
    assert registry.load_one("older", root) is not None
    # An entry torn by a crash mid-append: cut off by the next append.
    with index.open("ab") as f:
        f.write(b"12345 67")
    with registry.locked(root) as reg:
        reg.put(make_record("newer"))
    assert b"12345 67" not in index.read_bytes() and index.read_bytes().endswith(b" newer\n")
    assert index.read_bytes().count(b" older\n") == 1
    for name in ("done0", "older", "newer"):
        assert registry.load_one(name, root) is not None
    # The history rewritten by an older release (a new file): the index is another file's.
    data = hist.read_bytes()
    hist.unlink()
    hist.write_bytes(data.replace(b'{"name": "done3", ', b'{"name": "done3x", '))
    assert registry.load_one("done3", root) is None
    assert registry.load_one("done3x", root) is not None
    # Entries pointing at the wrong lines of this very file: the file itself is searched.
    entries = index.read_bytes().splitlines(keepends=True)
    head = entries[0].split(b"inode ")[0] + b"inode %d\n" % hist.stat().st_ino
    index.write_bytes(head + b"".join(e.replace(b" done4\n", b" done5\n") for e in entries[1:]))
    five = registry.load_one("done5", root)
    assert five is not None and five.name == "done5"
    with registry.locked(root) as reg:  # rm makes the index afresh
        reg.forget("done6")
    assert registry.load_one("done4", root) is not None and registry.load_one("done6", root) is None
    assert b" done4\n" in index.read_bytes()


def test_a_tombstone_after_a_torn_line_starts_on_its_own_line(tmp_path: Path) -> None:
    root = tmp_path / "state"
    _fill(root, active=0, finished=4)
    with open(paths.history_path(root), "ab") as f:
        f.write(b'{"name": "torn", "state": "succ')  # a crash mid-append
    with registry.locked(root) as reg:
        reg.forget("done1")
    assert registry.load_one("done1", root) is None
    assert [r.name for r in registry.load_all(root)] == ["done0", "done2", "done3"]
    assert paths.history_path(root).read_bytes().endswith(b'\n{"name": "done1", "removed": true}\n')


def test_a_torn_last_line_is_skipped_and_the_next_append_starts_clean(tmp_path: Path) -> None:
    root = tmp_path / "state"
    _fill(root, active=0, finished=2)
    with open(paths.history_path(root), "ab") as f:
        f.write(b'{"name": "torn", "state": "succ')  # a crash mid-append
    assert [r.name for r in registry.load_all(root)] == ["done0", "done1"]
    with registry.locked(root) as reg:
        reg.put(make_record("after"))
    assert [r.name for r in registry.load_all(root)] == ["done0", "done1", "after"]
    assert registry.load_one("after", root) is not None


def test_first_release_registry_loads_and_migrates(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    shutil.copy(DATA / "registry-v1.json", paths.registry_path(root))
    before = {r.name: r for r in registry.load_all(root)}  # readers understand v1 as it is
    assert before and all(r.runs for r in before.values())
    with registry.locked(root) as reg:
        assert set(reg.active) == {n for n, r in before.items() if r.state.active}
    doc = json.loads(paths.registry_path(root).read_text())
    assert doc["schema_version"] == 2
    after = {r.name: r for r in registry.load_all(root)}
    assert after.keys() == before.keys()
    for name, record in after.items():
        assert record.state == before[name].state
        assert record.current.handle == before[name].current.handle
        assert record.current.pids == before[name].current.pids
    assert registry.load_one("exp1", root) is not None
    finished = [n for n, r in after.items() if not r.state.active]
    with registry.locked(root) as reg:  # a migrated history takes tombstones like any other
        reg.forget(finished[0])
    assert registry.load_one(finished[0], root) is None
    assert {r.name for r in registry.load_all(root)} == after.keys() - {finished[0]}


def test_newer_or_broken_files_give_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    path = paths.registry_path(root)
    path.write_text(json.dumps({"schema_version": 99, "jobs": []}))
    with pytest.raises(RegistryError, match="newer handyjobs"):
        registry.load_recent(root)
    path.write_text("{not json")
    with pytest.raises(RegistryError, match="move it aside"):
        registry.load_active(root)


_BUMP = """
import sys
from pathlib import Path
from handyjobs.core import registry
from handyjobs.core.records import JobRecord, JobSpec, JobState, Run
root = Path(sys.argv[1])
for i in range(int(sys.argv[2])):
    with registry.locked(root) as reg:
        name = f"{sys.argv[3]}-{reg.take_id()}"
        run = Run(run=1, run_id=name, state=JobState.RUNNING, created_at="2026-01-01T00:00:00Z")
        reg.put(JobRecord(name=name, spec=JobSpec(script="x.py"), log_path="l",
                          created_at=run.created_at, runs=[run]))
"""


def _bump(root: Path, writers: int, each: int) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen([sys.executable, "-c", _BUMP, str(root), str(each), f"p{i}"])
        for i in range(writers)
    ]


def test_lock_serialises_read_modify_write_across_processes(tmp_path: Path) -> None:
    root = tmp_path / "state"
    procs = _bump(root, 4, 15)
    assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
    assert len(registry.load_active(root)) == 60  # no update lost
    assert json.loads(paths.registry_path(root).read_text())["next_id"] == 61


def test_deleting_lock_files_never_lets_two_writers_in(tmp_path: Path) -> None:
    root = tmp_path / "state"
    paths.ensure_home(root)
    procs = _bump(root, 4, 15)
    # An adversary deletes every lock-looking file as fast as it can while they write.
    while any(p.poll() is None for p in procs):
        for name in ("registry.lock", "scheduler.lock"):
            with __import__("contextlib").suppress(FileNotFoundError):
                (root / name).unlink()
        time.sleep(0.001)
    assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
    assert len(registry.load_active(root)) == 60


_WRITER = """
import sys
from pathlib import Path
from handyjobs.core import registry
sys.path.insert(0, sys.argv[2])
from conftest import make_record
from handyjobs.core.records import JobState
root = Path(sys.argv[1])
n = 0
print("ready", flush=True)
while True:
    with registry.locked(root) as reg:
        reg.put(make_record(f"extra-{n}", JobState.RUNNING))
        reg.put(make_record(f"done-{n}"))
    n += 1
"""


def test_sigkill_mid_write_leaves_whole_files(tmp_path: Path) -> None:
    root = tmp_path / "state"
    _fill(root, active=300, finished=300)  # big enough that a write takes a while
    for delay in (0.05, 0.13, 0.21, 0.37):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(root), str(REPO / "tests")],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        time.sleep(delay)  # let it get somewhere into a write, then kill it mid-flight
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert len(registry.load_active(root)) >= 300  # never a half-written file
        assert len(registry.load_all(root)) >= 600
    with registry.locked(root) as reg:
        reg.put(make_record("last"))
    assert not [p for p in os.listdir(root) if ".tmp-" in p]  # the killed writers' temps went


def test_load_one_finds_exactly_that_name(tmp_path: Path) -> None:
    root = tmp_path / "state"
    with registry.locked(root) as reg:
        for name in ("exp", "exp1", "exp10", "x-exp1"):
            reg.put(make_record(name))
    one = registry.load_one("exp1", root)
    assert one is not None and one.name == "exp1"
    assert registry.load_one("ex", root) is None


# ---- the state folder ----------------------------------------------------------------------


def test_home_is_made_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        root = tmp_path / "a" / "b" / "state"
        with registry.locked(root) as reg:
            reg.put(make_record("j"))
        paths.ensure_private_dir(paths.job_dir("j", root))
    finally:
        os.umask(old)
    for folder in (tmp_path / "a", tmp_path / "a" / "b", root, root / "jobs", root / "jobs" / "j"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_a_shared_or_broken_home_is_refused_never_chmodded(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(UsageError, match="writable by others"):
        paths.ensure_home(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="symbolic link to nothing"):
        paths.ensure_home(dangling)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        paths.ensure_home(a_file)
    with pytest.raises(UsageError, match="a part of that path is a file"):
        paths.ensure_home(a_file / "sub")
