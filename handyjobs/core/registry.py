"""The job registry: storage only. Load, locked update, atomic write, migrations.

Two files keep every record (schema version 2)::

    registry.json    {"schema_version": 2, "next_id": 7, "finished": 9812, "removed": 3, "jobs": [
                     {"name": "exp1", "state": "running", ...}
                     ]}
    history.jsonl    {"schema_version": 2}
                     {"name": "train-1", "state": "succeeded", ...}
                     ...

``registry.json`` holds only active records (queued, running), so writing it costs the same
with 10 finished jobs as with 10,000. A record that ends is appended to ``history.jsonl``, one
line each; the last line of a name wins, and a name that is active again (restarted) is read
from ``registry.json``. ``rm`` and ``clean`` append a tombstone line per forgotten name, and
``removed`` counts them until a compaction rewrites the history without them.
The history's format, its readers and writers are in :mod:`handyjobs.core.history`.

Reads take no lock: ``registry.json`` is replaced atomically and history lines are appended
whole (a torn last line, from a crash mid-append, is skipped). Every read-modify-write holds
an exclusive ``flock`` on the state folder itself, which no one can delete or replace while
it is held (a lock *file* can be deleted, letting a second writer in). Where a folder cannot
be locked (some network file systems) a lock file is used, checked to be the file on disk.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from handyjobs.core import history, paths
from handyjobs.core.records import SCHEMA_VERSION, JobRecord
from handyjobs.errors import RegistryError, storage_error
from handyjobs.structs import field, mutable

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from typing import Any


def _numbered(name: str, stem: str) -> bool:
    return name.startswith(stem + "-") and name[len(stem) + 1 :].isdigit()


# ---- the locked view -----------------------------------------------------------------------


@mutable
class Registry:
    """What one locked read-modify-write sees: active records, counters, and changes to save."""

    root: Path
    active: dict[str, JobRecord] = field(default_factory=dict)
    next_id: int = 1
    finished_count: int = 0
    #: Tombstones in the history since it was last compacted.
    removed_count: int = 0
    modified: bool = False
    #: Finished records to append to the history, by name.
    _ended: dict[str, JobRecord] = field(default_factory=dict)
    #: Finished names to drop from the history.
    _forgotten: set[str] = field(default_factory=set)
    #: Names whose lines in the history file get a tombstone at the next save (in order).
    _tombs: dict[str, None] = field(default_factory=dict)
    #: History lookups made during this lock (the file does not change while we hold it).
    _looked_up: dict[str, JobRecord | None] = field(default_factory=dict)

    def records(self) -> list[JobRecord]:
        """The active records."""
        return list(self.active.values())

    def get(self, name: str) -> JobRecord | None:
        """A record by name, active or finished."""
        if name in self.active:
            return self.active[name]
        if name in self._forgotten:
            return None
        if name in self._ended:
            return self._ended[name]
        return self._lookup(name)

    def _lookup(self, name: str) -> JobRecord | None:
        if name not in self._looked_up:
            self._looked_up[name] = history.lookup(self.root, name)
        return self._looked_up[name]

    def exists(self, name: str) -> bool:
        """True when a record of this name is kept (active or finished)."""
        return self.get(name) is not None

    def numbers(self, stem: str) -> set[int]:
        """The N of every job named ``STEM-N`` kept (active, finished, or just put): the
        default names already given for a script of that stem, read in one pass."""
        head = re.compile(
            rb'(?:^|\n)\{"name": "'
            + re.escape(stem.encode())
            + rb'-([0-9]+)", ("removed": true\}(?=\n|$))?'
        )
        data = history.read(paths.history_path(self.root)) or b""
        kept = {int(m[1]): not m[2] for m in head.finditer(data)}  # the last line of each wins
        found = {n for n, alive in kept.items() if alive}
        names = [*self.active, *self._ended]
        found.update(int(n[len(stem) + 1 :]) for n in names if _numbered(n, stem))
        return found

    def put(self, record: JobRecord) -> None:
        """Add or replace a record; an ended one moves to the history when saved."""
        name = record.name
        was_active = name in self.active
        if record.state.active:
            if not was_active and self._finished_exists(name):
                self.finished_count -= 1  # restarted: it is active again
            self.active.pop(name, None)
            self.active[name] = record  # last activity at the end
            self._ended.pop(name, None)
        else:
            if was_active or not self._finished_exists(name):
                self.finished_count += 1
            self.active.pop(name, None)
            self._ended[name] = record
        self._forgotten.discard(name)
        self.modified = True

    def forget(self, name: str) -> None:
        """Drop a finished record (a tombstone for its history lines goes at the next save)."""
        if name in self.active:
            raise ValueError(f"job {name} is active; end it before forgetting it")
        if self._finished_exists(name):
            self.finished_count -= 1
        if name not in self._forgotten and self._lookup(name) is not None:
            self._tombs[name] = None
        self._ended.pop(name, None)
        self._forgotten.add(name)
        self.modified = True

    def finished(self) -> list[JobRecord]:
        """Every finished record, the history read in one pass (``clean``), newest last."""
        skip = set(self.active) | self._forgotten | set(self._ended)
        found = history.every(paths.history_path(self.root), skip)
        self._looked_up.update((r.name, r) for r in found)
        return found + list(self._ended.values())

    def _finished_exists(self, name: str) -> bool:
        if name in self._forgotten:
            return False
        return name in self._ended or self._lookup(name) is not None

    def take_id(self) -> int:
        """A number never handed out before, for default job names."""
        value = self.next_id
        self.next_id += 1
        self.modified = True
        return value

    def save(self) -> None:
        """Write the changes: history first, then ``registry.json`` (the commit point)."""
        if not self.modified:
            return
        # Compact when the tombstones would outnumber the records kept: rewriting N kept
        # lines then follows at least N removals, one line copied per line removed.
        if self._tombs and self.removed_count + len(self._tombs) > self.finished_count:
            history.compact(self.root, set(self._tombs), set(self.active), self._ended)
            self.removed_count = 0
        elif self._tombs or self._ended:
            # An rm or clean (never a job's end) may index a history of an older release.
            history.append(self.root, self._ended.values(), self._tombs, rebuild=bool(self._tombs))
            self.removed_count += len(self._tombs)
        try:
            paths.remove_stale_temps(self.root)
            paths.write_atomic(paths.registry_path(self.root), self._bytes())
        except OSError as exc:
            raise storage_error(exc, "write the registry") from exc
        self._ended.clear()
        self._forgotten.clear()
        self._tombs.clear()
        self._looked_up.clear()
        self.modified = False

    def _bytes(self) -> bytes:
        head = json.dumps(
            {
                "schema_version": SCHEMA_VERSION,
                "next_id": self.next_id,
                "finished": max(0, self.finished_count),
                "removed": self.removed_count,
            }
        )
        body = [json.dumps(r.to_dict(), ensure_ascii=False).encode() for r in self.active.values()]
        return head[:-1].encode() + b', "jobs": [\n' + b",\n".join(body) + b"\n]}\n"


# ---- locks ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _lock(root: Path, mode: int) -> Iterator[None]:
    """Hold an flock on the state folder (or, where that cannot be locked, on the lock file)."""
    while True:
        try:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise storage_error(exc, "open the state folder") from exc
        try:
            try:
                paths.flock_saying(fd, mode)
            except OSError as exc:
                if exc.errno not in (errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise storage_error(exc, "lock the state folder") from exc
                os.close(fd)
                fd = -1
                with _lock_file(root, mode):
                    yield
                return
            # The folder may have been replaced between open and flock: lock the one on disk.
            if _same_file(fd, root):
                yield
                return
        finally:
            if fd >= 0:
                os.close(fd)


@contextlib.contextmanager
def _lock_file(root: Path, mode: int) -> Iterator[None]:
    """Fallback lock on ``registry.lock``, retried until the locked file is the one on disk."""
    path = paths.lock_path(root)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise storage_error(exc, "open the lock file") from exc
        try:
            try:
                paths.flock_saying(fd, mode)
            except OSError as exc:
                # Nothing to fall back on: writers without a lock would lose each other's jobs.
                raise storage_error(exc, f"lock {path}") from exc
            if _same_file(fd, path):
                yield
                return
        finally:
            os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


@contextlib.contextmanager
def locked(root: Path | None = None) -> Iterator[Registry]:
    """Hold the registry lock, yield the registry, save it if it was modified.

    Nothing is saved when the block raises. The state folder is created (0700) if missing.
    """
    base = paths.ensure_home(root)
    with _lock(base, fcntl.LOCK_EX):
        reg = _load_locked(base)
        yield reg
        reg.save()


@contextlib.contextmanager
def shared(root: Path | None = None) -> Iterator[None]:
    """Hold the lock shared: wait for a writer in the middle of its read-modify-write."""
    with _lock(root or paths.home(), fcntl.LOCK_SH):
        yield


# ---- reading -------------------------------------------------------------------------------


def _bad(path: Path, exc: Exception) -> RegistryError:
    return RegistryError(
        f"the registry {path} is not valid ({str(exc)[:200]}); fix that value, or move it"
        " aside to start afresh (its running jobs are then not known)"
    )


def _decode_head(data: bytes, path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        version = int(doc.get("schema_version", 0))
    except (ValueError, TypeError) as exc:
        raise _bad(path, exc) from exc
    if version > SCHEMA_VERSION:
        raise RegistryError(
            f"{path} was written by a newer handyjobs (schema {version}); upgrade handyjobs"
        )
    return doc


def _records(raw: Iterable[Any], version: int, path: Path) -> list[JobRecord]:
    try:
        return [history.checked(JobRecord.from_dict(history.migrate(d, version))) for d in raw]
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        raise _bad(path, exc) from exc


@mutable
class _Snapshot:
    """``registry.json`` as read: active records (and, from a v1 file, the finished ones)."""

    version: int
    next_id: int
    finished_count: int
    active: list[JobRecord]
    legacy_finished: list[JobRecord]
    removed_count: int = 0


def _snapshot(root: Path) -> _Snapshot:
    path = paths.registry_path(root)
    data = history.read(path)
    if data is None:
        return _Snapshot(SCHEMA_VERSION, 1, 0, [], [])
    doc = _decode_head(data, path)
    version = int(doc.get("schema_version", 0))
    records = _records(doc.get("jobs", []), version, path)
    try:
        next_id = _count(doc.get("next_id", len(records) + 1), "next_id")
        if version < 2:  # the first release kept every record here
            active = [r for r in records if r.state.active]
            done = [r for r in records if not r.state.active]
            return _Snapshot(version, next_id, len(done), active, done)
        finished = _count(doc.get("finished", 0), "finished")
        removed = _count(doc.get("removed", 0), "removed")
        return _Snapshot(version, next_id, finished, records, [], removed)
    except (ValueError, TypeError, OverflowError) as exc:
        raise _bad(path, exc) from exc


def _count(value: Any, key: str) -> int:
    """A counter of the file: a whole number from 0 to 2**53 (what JSON keeps exactly)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1 << 53:
        raise ValueError(f"{key} is {str(value)[:20]!r}, not a count")
    return value


def _load_locked(root: Path) -> Registry:
    """Read the registry under the lock, migrating a first-release file to this layout."""
    snap = _snapshot(root)
    reg = Registry(
        root,
        {r.name: r for r in snap.active},
        snap.next_id,
        snap.finished_count,
        snap.removed_count,
    )
    if snap.version < 2:
        # Written once, under the lock: the finished records move to the history, then the
        # active ones are saved in the new layout. A crash in between repeats the migration.
        history.write(root, snap.legacy_finished)
        reg.modified = True
        reg.save()
    return reg


def load_active(root: Path | None = None) -> list[JobRecord]:
    """The active records, read without the lock."""
    return _snapshot(root or paths.home()).active


def load_one(name: str, root: Path | None = None) -> JobRecord | None:
    """One record by name (active first, else its last history line), without the lock."""
    base = root or paths.home()
    snap = _snapshot(base)
    for record in snap.active:
        if record.name == name:
            return record
    if snap.version < 2:
        return next((r for r in snap.legacy_finished if r.name == name), None)
    return history.lookup(base, name)


def load_recent(root: Path | None = None, finished: int = 20) -> tuple[list[JobRecord], int]:
    """The active records plus the ``finished`` newest finished ones, and the total count.

    Only those history lines are parsed, read backwards from the end of the file, so
    ``handyjobs list`` costs the same with 100 finished jobs as with 10,000.
    """
    base = root or paths.home()
    snap = _snapshot(base)
    total = len(snap.active) + snap.finished_count
    if snap.version < 2:
        done = snap.legacy_finished[::-1][:finished]
        return snap.active + done, total
    seen = {r.name for r in snap.active}
    picked = history.newest(paths.history_path(base), seen, finished)
    return snap.active + picked, total


def load_all(root: Path | None = None) -> list[JobRecord]:
    """Every record: active ones, then every finished one (newest last), without the lock."""
    base = root or paths.home()
    snap = _snapshot(base)
    if snap.version < 2:
        return snap.active + snap.legacy_finished
    active = {r.name for r in snap.active}
    finished = history.every(paths.history_path(base), active)
    return snap.active + finished
