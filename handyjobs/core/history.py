"""The job history: finished records, one JSON line each, appended to ``history.jsonl``.

::

    history.jsonl    {"schema_version": 2}
                     {"name": "train-1", "state": "succeeded", ...}
                     {"name": "train-1", "removed": true}
                     ...

The last line of a name wins; a *tombstone* (``"removed": true``) says the name is kept no
more. ``rm`` and ``clean`` append tombstones instead of rewriting the file, so removing one
job of 100,000 writes some 40 bytes; the file is compacted (rewritten with one line per kept
name) only by the ``rm`` or ``clean`` whose tombstones would outnumber the kept records, so
compaction costs at most one line copied per line removed, and never slows a start or an
outcome. A file of an older release, with no tombstones, reads as it is (a release before
tombstones, reading a newer file, skips them with a note and shows the removed jobs again).

Lines are appended whole and fsynced; a torn last line, from a crash mid-append, is skipped by
readers and the next append starts on a line of its own. Readers of the newest jobs read the
file from its end a block at a time, and a reader of one job finds its line through the index
``history.idx`` (below), so their cost is how far back they look, not the history's size. This
module also holds the checks every record read from a file
passes (:func:`checked`) and its migration (:func:`migrate`), which
:mod:`handyjobs.core.registry` applies to ``registry.json`` too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from handyjobs.core import paths
from handyjobs.core.logs import lines_backwards
from handyjobs.core.records import NAME_RE, SCHEMA_VERSION, JobRecord, ProcId
from handyjobs.errors import printable, storage_error

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from typing import Any, TypeAlias

HEADER = json.dumps({"schema_version": SCHEMA_VERSION}).encode() + b"\n"
# Reading the history backwards, a block at a time.
_BLOCK = 64 * 1024
# History bytes an older release appended, unindexed, that a job's end indexes with its own
# line; past this, the next rm or clean does (a job's end must stay quick).
_MAX_MISSED = 1024 * 1024
#: The largest pid Linux gives (PID_MAX_LIMIT). A bigger or negative pid in a file is no
#: process of ours and must never reach kill(): pid -1 is every process we may signal.
_PID_MAX = 1 << 22
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: How a tombstone line ends: after its name, where a record's line goes on with its fields.
_TOMB_END = b', "removed": true}'


def read(path: Path) -> bytes | None:
    """A file's bytes; None when it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise storage_error(exc, "read") from exc


def checked(record: JobRecord) -> JobRecord:
    """``record``, refused (ValueError) when a well-formed file holds a value no command may
    act on: a name that is a path, no run, a pid that is no process, a negative count."""
    name = record.name
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"{name!r} is not a job name")
    if not record.runs:
        raise ValueError(f"job {name} has no run")
    for run in record.runs:
        if not _RUN_ID_RE.match(run.run_id) or run.run < 1 or run.nproc < 1:
            raise ValueError(f"job {name}: run {run.run} ({run.run_id!r}) is not a run")
        for proc in (run.runner, run.main):
            if proc is not None and not (0 < proc.pid <= _PID_MAX and (proc.start or 0) >= 0):
                raise ValueError(f"job {name}: {proc.pid} (start {proc.start}) is not a process id")
        if any(g < 0 for g in run.gpus):
            raise ValueError(f"job {name}: run {run.run} names a negative GPU")
    return record


def migrate(d: dict[str, Any], version: int) -> dict[str, Any]:
    """Bring one record from an older schema version up to the current one."""
    if version < 2:
        # v1 kept the session on the record, pids as a flat dict, and why a job waited as an
        # English sentence (now data, recomputed by the next scheduling pass).
        d = dict(d)
        runs = [dict(r) for r in d.get("runs", [])]
        if runs:
            runs[-1].setdefault("handle", {"session": d.get("session", d["name"])})
        for r in runs:
            pids = r.get("pids") or {}
            if "runner" not in r and pids.get("runner"):
                r["runner"] = ProcId(int(pids["runner"])).to_dict()
            if "main" not in r and pids.get("main"):
                r["main"] = ProcId(int(pids["main"])).to_dict()
            r.pop("waiting_for", None)
        d["runs"] = runs
    return d


def tombstone(name: str) -> bytes:
    """The line that says ``name`` is kept no more (without its newline)."""
    return b'{"name": ' + json.dumps(name).encode() + _TOMB_END


def is_tombstone(line: bytes) -> bool:
    """True for a tombstone line, read without parsing it (names need no JSON escapes)."""
    if not line.endswith(_TOMB_END):
        return False
    name = line_name(line)
    return name is not None and line == tombstone(name)


def parse_line(line: bytes, path: Path) -> JobRecord | None:
    """A history line as a record; None for the header, a tombstone, a torn line or a wrong one
    (skipped, and said once: one bad line must not stop list, rm or clean)."""
    if not line.startswith(b'{"name": ') or is_tombstone(line):
        return None
    try:
        doc = json.loads(line)
    except ValueError:
        return None  # torn by a crash mid-append: the record is still active or appended again
    try:
        return checked(JobRecord.from_dict(migrate(doc, SCHEMA_VERSION)))
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        _skipped(path, line_name(line), exc)
        return None


#: History files whose wrong lines were already reported by this process.
_SAID: set[Path] = set()


def _skipped(path: Path, name: str | None, exc: Exception) -> None:
    """Say once per file that a wrong line was skipped; every other record still reads."""
    if path not in _SAID:
        _SAID.add(path)
        text = str(exc)[:200]
        why = printable(text if name and name in text else f"job {name}: {text}")
        sys.stderr.write(f"handyjobs: skipped a line of {path} ({why}); fix or delete it\n")


def _whole(line: bytes) -> bool:
    """True for a line that is one whole JSON document (not torn by a crash)."""
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def line_name(line: bytes) -> str | None:
    """The name of a history line, read without parsing it (names need no JSON escapes)."""
    if not line.startswith(b'{"name": "'):
        return None
    end = line.find(b'"', 10)
    return line[10:end].decode(errors="replace") if end > 10 else None


def lines_backwards_of(path: Path) -> Iterator[bytes]:
    """The history's lines, last first, read a block at a time from the end."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise storage_error(exc, "read") from exc
    try:
        yield from lines_backwards(fd, _BLOCK)
    finally:
        os.close(fd)


def lookup(root: Path, name: str) -> JobRecord | None:
    """The last history line of ``name``, parsed; None when there is none or it is a tombstone.

    The index names the line; only the history's tail it does not cover yet is searched (from
    the end, a block at a time). Without a usable index the whole history is searched from the
    end: the cost is then how far back the job ended (or was removed).
    """
    path = paths.history_path(root)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise storage_error(exc, "read") from exc
    index = _Index.open(root)  # after the history: a compaction in between shows as stale
    try:
        if index is not None and not index.describes(fd):
            index.close()
            index = None
        low = 0 if index is None else index.covered
        found, record = _search(fd, path, name, low, os.fstat(fd).st_size)
        if found or index is None:
            return record
        answer = index.find(fd, path, name)
        if answer is None:  # an index that does not match the file: search the file itself
            answer = _search(fd, path, name, 0, low)
        return answer[1]
    finally:
        os.close(fd)
        if index is not None:
            index.close()


#: A search's answer: whether a line of the name was found, and its record (None for a
#: tombstone, which is found too: the name is kept no more).
_Found: TypeAlias = "tuple[bool, JobRecord | None]"
_NOT_FOUND: _Found = (False, None)


def _search(fd: int, path: Path, name: str, low: int, high: int) -> _Found:
    """The last line of ``name`` between offsets ``low`` (a line's start) and ``high``."""
    needle = b'\n{"name": ' + json.dumps(name).encode() + b", "
    for line in _lines_with(fd, needle, low, high):
        if is_tombstone(line):
            return True, None
        record = parse_line(line, path)
        if record is not None:
            return True, record
    return _NOT_FOUND


def _lines_with(fd: int, needle: bytes, low: int, high: int) -> Iterator[bytes]:
    """The lines between offsets ``low`` (a line's start) and ``high`` that hold ``needle``
    (which may begin with the newline before a line), last first, read a block at a time."""
    pos, tail = high, b""
    while pos > low:
        size = min(_BLOCK, pos - low)
        pos -= size
        chunk = os.pread(fd, size, pos) + tail
        # Whole lines only: the first one may go on in the block before (kept as ``tail``).
        if pos == low:
            body, tail = b"\n" + chunk, b""
        else:
            cut = chunk.find(b"\n")
            body, tail = (b"", chunk) if cut == -1 else (chunk[cut:], chunk[:cut])
        hit = body.rfind(needle)
        while hit != -1:
            begin = body.rfind(b"\n", 0, hit + 1) + 1
            end = body.find(b"\n", hit + 1)
            yield body[begin : None if end == -1 else end]
            hit = body.rfind(needle, 0, begin)


# ---- the index ----------------------------------------------------------------------------
#
# history.idx: a header naming the history file it indexes (by inode: a compaction makes a new
# file), then "OFFSET LENGTH NAME" for each history line. A look-up searches it from the end
# (some 30 bytes a job where the history has 2 KB) and reads the one line it points to. The
# index is advisory: the history alone is the record, and an index that is missing, another
# file's, or behind it (a crash between the two appends, an older release's appends) is
# worked around by searching the history itself.

_INDEX_MAGIC = b"handyjobs history index 1, inode "


class _Index:
    """An open index and the history bytes it covers (lines below ``covered`` are indexed)."""

    def __init__(self, fd: int, inode: int, start: int, last: _Entry | None) -> None:
        """Keep the open index, its history's inode, where its entries start, its last entry."""
        self.fd, self.inode, self.start, self.last = fd, inode, start, last
        self.covered = 0 if last is None else last[0] + last[1]

    @classmethod
    def open(cls, root: Path) -> _Index | None:
        """The index of the state folder's history, or None when there is none it can use."""
        try:
            fd = os.open(paths.history_index_path(root), os.O_RDONLY)
        except OSError:
            return None
        try:
            head = os.pread(fd, 128, 0).split(b"\n", 1)[0]
            if not head.startswith(_INDEX_MAGIC):
                raise ValueError("not an index")
            inode = int(head[len(_INDEX_MAGIC) :])
            last = _last_entry(fd, len(head) + 1)
        except (OSError, ValueError):
            os.close(fd)
            return None
        return cls(fd, inode, len(head) + 1, last)

    def describes(self, hist_fd: int) -> bool:
        """True when this index is of that open history file: its inode (which a file made
        later may reuse) and its last entry, which must point at a whole line of its name."""
        st = os.fstat(hist_fd)
        if st.st_ino != self.inode or self.covered > st.st_size:
            return False
        if self.last is None:
            return True
        offset, length, name = self.last
        line = os.pread(hist_fd, length, offset)
        return line.endswith(b"\n") and line_name(line) == name

    def find(self, hist_fd: int, path: Path, name: str) -> _Found | None:
        """The last covered line of ``name``; None when an entry does not point at a line of
        that name (the index is not this history's)."""
        size = os.fstat(self.fd).st_size
        for entry in _lines_with(self.fd, b" " + name.encode() + b"\n", self.start, size):
            try:
                offset, length, _ = entry.split(b" ", 2)
                line = os.pread(hist_fd, int(length), int(offset))
            except (ValueError, OSError):
                return None
            if not line.endswith(b"\n") or line_name(line) != name:
                return None
            if is_tombstone(line[:-1]):
                return True, None
            record = parse_line(line[:-1], path)
            if record is not None:
                return True, record
        return _NOT_FOUND

    def close(self) -> None:
        """Close the index file."""
        os.close(self.fd)


#: An index entry: the offset and length (with its newline) of a history line, and its name.
_Entry: TypeAlias = "tuple[int, int, str]"


def _last_entry(fd: int, start: int) -> _Entry | None:
    """The index's last whole entry (None when it has none); a torn last entry (a crash
    mid-append) is not counted. ValueError when the entry is not one."""
    size = os.fstat(fd).st_size
    begin = max(start, size - 4096)
    data = os.pread(fd, size - begin, begin)
    whole = data[: data.rfind(b"\n") + 1]
    last = whole[:-1].rsplit(b"\n", 1)
    if begin > start and len(last) == 1:  # the entry may begin before what was read
        raise ValueError("no whole entry at the end of the index")
    if not whole:
        return None
    offset, length, name = last[-1].split(b" ", 2)
    return int(offset), int(length), name.decode()


def _entries(start: int, data: bytes) -> bytes:
    """Index entries for the history lines in ``data``, which begins at offset ``start``."""
    out, pos = [], start
    for line in data.split(b"\n")[:-1]:  # what follows the last newline is no whole line
        name = line_name(line)
        if name is not None:
            out.append(b"%d %d %s\n" % (pos, len(line) + 1, name.encode()))
        pos += len(line) + 1
    return b"".join(out)


def _index_appended(root: Path, hist_fd: int, start: int, data: bytes, rebuild: bool) -> None:
    """Index ``data``, just appended to the history at ``start``, and any tail the index
    missed before it. ``rebuild`` (rm, clean: never a job's end) makes a missing or stale
    index afresh. Errors are ignored: readers work around an index that is behind."""
    with contextlib.suppress(OSError):
        index = _Index.open(root)
        if index is None or not index.describes(hist_fd) or index.covered > start:
            if index is not None:
                index.close()
            if start == 0:  # a new history: its index is just as new
                _write_index(root, os.fstat(hist_fd).st_ino, _entries(0, data))
            elif rebuild:
                _index_all(root, hist_fd)
            return
        try:
            missed = start - index.covered
            if missed > _MAX_MISSED and not rebuild:
                return  # an older release appended much: left to the next rm or clean
            old = os.pread(hist_fd, missed, index.covered) if missed else b""
            _append_entries(root, index, _entries(index.covered, old) + _entries(start, data))
        finally:
            index.close()


def _append_entries(root: Path, index: _Index, entries: bytes) -> None:
    """Append entries to the index, after cutting off an entry torn by a crash."""
    fd = os.open(paths.history_index_path(root), os.O_WRONLY | os.O_APPEND)
    try:
        size = os.fstat(fd).st_size
        if os.pread(index.fd, 1, size - 1) != b"\n":
            os.ftruncate(fd, os.pread(index.fd, size, 0).rfind(b"\n") + 1)
        paths.write_all(fd, entries)
        os.fsync(fd)
    finally:
        os.close(fd)


def _index_all(root: Path, hist_fd: int) -> None:
    """Write the index of the whole history afresh, read a block at a time."""
    out, pos, tail = [], 0, b""
    while True:
        got = os.pread(hist_fd, 16 * _BLOCK, pos)
        if not got:
            break
        chunk, begin = tail + got, pos - len(tail)
        cut = chunk.rfind(b"\n") + 1
        out.append(_entries(begin, chunk[:cut]))
        pos, tail = pos + len(got), chunk[cut:]
    _write_index(root, os.fstat(hist_fd).st_ino, b"".join(out))


def _write_index(root: Path, inode: int, entries: bytes) -> None:
    """Replace the index with these entries of the history file ``inode``."""
    paths.write_atomic(paths.history_index_path(root), _INDEX_MAGIC + b"%d\n" % inode + entries)


def newest(path: Path, skip: set[str], count: int) -> list[JobRecord]:
    """The ``count`` newest finished records not named in ``skip``, newest first; only
    those lines are parsed, read backwards from the end of the file."""
    seen = set(skip)
    picked: list[JobRecord] = []
    for line in lines_backwards_of(path):
        if len(picked) >= count:
            break
        name = line_name(line)
        if name is None or name in seen:
            continue
        if is_tombstone(line):
            seen.add(name)  # removed: its older lines are no record
            continue
        record = parse_line(line, path)
        if record is not None:
            seen.add(name)
            picked.append(record)
    return picked


def every(path: Path, skip: set[str]) -> list[JobRecord]:
    """Every finished record not named in ``skip``, the last line of each name, newest last."""
    finished: dict[str, JobRecord] = {}
    for line in (read(path) or b"").split(b"\n"):
        name = line_name(line)
        if name is None or name in skip:
            continue
        if is_tombstone(line):
            finished.pop(name, None)
            continue
        record = parse_line(line, path)
        if record is not None:
            finished.pop(name, None)
            finished[name] = record
    return list(finished.values())


# ---- writing -------------------------------------------------------------------------------


def _line(record: JobRecord) -> bytes:
    return json.dumps(record.to_dict(), ensure_ascii=False).encode() + b"\n"


def append(
    root: Path, records: Iterable[JobRecord], removed: Iterable[str] = (), rebuild: bool = False
) -> None:
    """Append tombstones for the ``removed`` names, then records, as whole lines, fsynced (a
    failed append is cut back off the file), then index them (``rebuild``: see
    :func:`_index_appended`)."""
    path = paths.history_path(root)
    data = b"".join(tombstone(n) + b"\n" for n in removed) + b"".join(_line(r) for r in records)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as exc:
        raise storage_error(exc, "write the job history") from exc
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            data = HEADER + data
        elif os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # a torn line from a crash: start on a line of our own
        try:
            paths.write_all(fd, data)
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise storage_error(exc, "write the job history") from exc
        _index_appended(root, fd, size, data, rebuild)
    finally:
        os.close(fd)


def write(root: Path, records: Iterable[JobRecord]) -> None:
    """Replace the history with these records (the first release's migration)."""
    _replace(root, HEADER + b"".join(_line(r) for r in records))


def _replace(root: Path, data: bytes) -> None:
    """Replace the history with ``data``, then its index (a stale one is never used)."""
    path = paths.history_path(root)
    try:
        paths.write_atomic(path, data)
    except OSError as exc:
        raise storage_error(exc, "write the job history") from exc
    with contextlib.suppress(OSError):
        _write_index(root, os.stat(path).st_ino, _entries(0, data))


def compact(root: Path, forgotten: set[str], active: set[str], ended: dict[str, JobRecord]) -> None:
    """Rewrite the history with one (the last) line per kept name: without tombstones, the
    names they removed, forgotten and active names; then the ``ended`` records."""
    keep: dict[str, bytes] = {}
    for line in (read(paths.history_path(root)) or b"").split(b"\n"):
        name = line_name(line)
        if name is None or name in forgotten or name in active or name in ended:
            continue
        if is_tombstone(line):
            keep.pop(name, None)
        elif _whole(line):  # a wrong but whole line is kept as it is: nothing is lost
            keep.pop(name, None)
            keep[name] = line + b"\n"
    body = b"".join(keep.values()) + b"".join(_line(r) for r in ended.values())
    _replace(root, HEADER + body)
