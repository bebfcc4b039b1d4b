"""The job registry: one JSON file, read fast, changed under a lock, replaced atomically.

Layout (valid JSON, one record per line so that ``list`` can skip what it does not show)::

    {"schema_version": 1, "next_id": 7, "jobs": [
    {"name": "train-1", "state": "succeeded", ...},
    {"name": "exp1", "state": "running", ...}
    ]}

Records are kept in order of last activity (``start``/``restart`` move a record to the end).
Reads never take the lock (writes are atomic renames); every read-modify-write does.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handyjobs import paths
from handyjobs.errors import RegistryError
from handyjobs.records import SCHEMA_VERSION, JobRecord, JobState, Run, utcnow

_HEAD = b'{"schema_version": '
_JOBS_OPEN = b'"jobs": ['
_ACTIVE_MARKS = (b'"state": "running"', b'"state": "queued"')
# "state" is a record's second key, after a name of at most 64 characters.
_STATE_WITHIN = 120


@dataclass
class Registry:
    """Every job record, by name, in order of last activity."""

    jobs: dict[str, JobRecord] = field(default_factory=dict)
    next_id: int = 1
    modified: bool = False

    def put(self, record: JobRecord, *, touch: bool = False) -> None:
        """Add or replace a record; ``touch`` moves it to the end (newest activity)."""
        if touch:
            self.jobs.pop(record.name, None)
        self.jobs[record.name] = record
        self.modified = True

    def remove(self, name: str) -> None:
        """Drop a record."""
        del self.jobs[name]
        self.modified = True

    def take_id(self) -> int:
        """A number never handed out before, for default job names."""
        value = self.next_id
        self.next_id += 1
        self.modified = True
        return value

    def to_bytes(self) -> bytes:
        """The file's bytes: a header line, one record per line, a closing line."""
        head = json.dumps({"schema_version": SCHEMA_VERSION, "next_id": self.next_id})
        lines = [head[:-1].encode() + b', "jobs": [']
        body = [json.dumps(r.to_dict(), ensure_ascii=False).encode() for r in self.jobs.values()]
        lines.append(b",\n".join(body))
        lines.append(b"]}\n")
        return b"\n".join(line for line in lines if line)


def _decode(data: bytes, source: Path) -> Registry:
    """Parse a whole registry file (any JSON layout), migrating older schema versions."""
    try:
        doc = json.loads(data)
        version = int(doc.get("schema_version", 0))
        if version > SCHEMA_VERSION:
            raise RegistryError(
                f"{source} was written by a newer handyjobs (schema {version}); upgrade handyjobs"
            )
        jobs = [JobRecord.from_dict(_migrate(d, version)) for d in doc.get("jobs", [])]
        return Registry({j.name: j for j in jobs}, int(doc.get("next_id", len(jobs) + 1)))
    except RegistryError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RegistryError(
            f"the registry {source} is not valid ({exc}); move it aside to start afresh"
        ) from exc


def _migrate(d: dict[str, Any], version: int) -> dict[str, Any]:
    """Bring one record from an older schema version up to the current one."""
    # Version 1 is the first published layout; later versions add their steps here.
    return d


def load(root: Path | None = None) -> Registry:
    """Read the whole registry without the lock (an empty one when the file does not exist)."""
    path = paths.registry_path(root)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Registry()
    return _decode(data, path)


def _body(data: bytes) -> tuple[int, int] | None:
    """Offsets of the record lines in a file laid out by :meth:`Registry.to_bytes`, else None."""
    first = data.find(b"\n") + 1
    last = data.rfind(b"\n]}")
    header = data[: first - 1]
    if first <= 0 or last < first - 1 or not header.startswith(_HEAD):
        return None
    if not header.endswith(_JOBS_OPEN) or data[last:].strip() != b"]}":
        return None
    return first, last


def _line_at(data: bytes, first: int, last: int, pos: int) -> tuple[int, int]:
    """The (start, end) of the record line holding offset ``pos``."""
    start = data.rfind(b"\n", first, pos) + 1 or first
    end = data.find(b"\n", pos, last)
    return max(start, first), last if end == -1 else end


def _parse_lines(data: bytes, spans: list[tuple[int, int]], path: Path) -> list[JobRecord]:
    try:
        return [JobRecord.from_dict(json.loads(data[a:b].rstrip(b","))) for a, b in spans]
    except (ValueError, KeyError, TypeError) as exc:
        raise RegistryError(
            f"the registry {path} is not valid ({exc}); move it aside to start afresh"
        ) from exc


def load_recent(root: Path | None = None, finished: int = 20) -> tuple[list[JobRecord], int]:
    """The active records plus the ``finished`` most recent finished ones, and the total count.

    Only those lines are parsed (found with ``bytes.find``, no split of the whole file), so
    ``handyjobs list`` stays fast with 10,000 records. Falls back to a full parse when the
    file is not in the layout :class:`Registry` writes (edited by hand, say).
    """
    path = paths.registry_path(root)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    body = _body(data)
    if body is None:
        reg = _decode(data, path)
        picked = [r for r in reversed(reg.jobs.values()) if r.state.active]
        done = [r for r in reversed(reg.jobs.values()) if not r.state.active][:finished]
        return picked + done, len(reg.jobs)
    first, last = body
    if last <= first:
        return [], 0
    total = data.count(b"\n", first, last) + 1
    spans: dict[int, int] = {}
    for mark in _ACTIVE_MARKS:  # active records can be anywhere: find them by their state
        pos = data.find(mark, first, last)
        while pos != -1:
            start, end = _line_at(data, first, last, pos)
            if pos - start < _STATE_WITHIN:
                spans[start] = end
            pos = data.find(mark, end, last)
    end, found = last, 0
    while found < finished and end > first:  # the newest finished ones are at the end
        start = data.rfind(b"\n", first, end) + 1 or first
        start = max(start, first)
        if not any(data.find(m, start, start + _STATE_WITHIN) != -1 for m in _ACTIVE_MARKS):
            spans[start] = end
            found += 1
        end = start - 1
    return _parse_lines(data, sorted(spans.items()), path), total


def load_one(name: str, root: Path | None = None) -> JobRecord | None:
    """One record by name, parsing only its line when the file has the usual layout."""
    path = paths.registry_path(root)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    body = _body(data)
    if body is None:
        return _decode(data, path).jobs.get(name)
    first, last = body
    needle = b'{"name": ' + json.dumps(name).encode() + b", "
    pos = data.find(b"\n" + needle, first - 1, last)
    if pos == -1:
        return None
    start, end = _line_at(data, first, last, pos + 1)
    return _parse_lines(data, [(start, end)], path)[0]


@contextlib.contextmanager
def locked(root: Path | None = None) -> Iterator[Registry]:
    """Hold the registry lock, yield the registry, save it atomically if it was modified."""
    base = root or paths.home()
    paths.ensure_private_dir(base)
    fd = os.open(paths.lock_path(base), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        reg = load(base)
        yield reg
        if reg.modified:
            save(reg, base)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def shared(root: Path | None = None) -> Iterator[None]:
    """Hold the lock shared: wait for a writer in the middle of its read-modify-write."""
    fd = os.open(paths.lock_path(root), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def save(reg: Registry, root: Path | None = None) -> None:
    """Replace the registry file atomically (callers hold the lock)."""
    path = paths.registry_path(root)
    paths.remove_stale_temps(path)
    paths.write_atomic(path, reg.to_bytes())
    reg.modified = False


# ---- reconciling records with what really runs ---------------------------------------------


def read_status(record: JobRecord, root: Path | None = None) -> dict[str, Any] | None:
    """The status file the current run's runner wrote, or None when there is none yet."""
    path = paths.status_path(record.name, record.current.run_id, root)
    try:
        doc: dict[str, Any] = json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    return doc if doc.get("run_id") == record.current.run_id else None


def runner_alive(pid: int | None) -> bool:
    """True when ``pid`` is a live handyjobs runner (not a recycled pid)."""
    if not pid or not paths.pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): trust the pid
        return True
    return b"handyjobs.runner" in cmdline


def apply_status(run: Run, status: dict[str, Any]) -> bool:
    """Fold a runner's status file into the run; True when something changed."""
    before = run.to_dict()
    pids = {k: int(v) for k, v in (status.get("pids") or {}).items()}
    if pids:
        run.pids.update(pids)
    if status.get("started_at") and run.started_at is None:
        run.started_at = status["started_at"]
    if status.get("gpus") is not None:
        run.gpus = tuple(status["gpus"])
    if status.get("rendezvous"):
        run.rendezvous = status["rendezvous"]
    if status.get("started_at") and run.state is JobState.QUEUED:
        run.state = JobState.RUNNING
        run.waiting_for = None
    if status.get("ended_at"):
        run.ended_at = status["ended_at"]
        run.exit_code = status.get("exit_code")
        run.signal = status.get("signal")
        if run.stop_requested:
            run.state = JobState.STOPPED
        elif run.exit_code == 0 and run.signal is None:
            run.state = JobState.SUCCEEDED
        else:
            run.state = JobState.FAILED
    return run.to_dict() != before


def reconcile(
    records: list[JobRecord],
    sessions: Callable[[], set[str]],
    root: Path | None = None,
) -> list[JobRecord]:
    """Bring active records up to date with their runners; return the records that changed.

    A run takes the outcome its runner recorded; a run whose runner and tmux session are both
    gone with no outcome becomes ``lost`` (tmux server killed, machine rebooted).
    ``sessions`` is called at most once, and only when a runner is not known to be alive.
    """
    changed: list[JobRecord] = []
    live_sessions: set[str] | None = None
    for record in records:
        run = record.current
        if not run.state.active:
            continue
        status = read_status(record, root)
        dirty = apply_status(run, status) if status else False
        if run.state.active:
            runner = (status or {}).get("pids", {}).get("runner") or run.pids.get("runner")
            if not runner_alive(runner):
                if live_sessions is None:
                    live_sessions = sessions()
                if record.session not in live_sessions:
                    # The runner may have written its outcome just before it went away.
                    status = read_status(record, root)
                    if status and apply_status(run, status):
                        dirty = True
                    if run.state.active:
                        run.state = JobState.LOST
                        run.ended_at = utcnow()
                        dirty = True
        if dirty:
            changed.append(record)
    return changed
