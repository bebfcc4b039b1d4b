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
readers and the next append starts on a line of its own. Readers of one job or of the newest
jobs read the file from its end a block at a time, so their cost is how far back they look,
not the history's size. This module also holds the checks every record read from a file
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
from typing import Any

from handyjobs.core import paths
from handyjobs.core.logs import lines_backwards
from handyjobs.core.records import NAME_RE, SCHEMA_VERSION, JobRecord, ProcId
from handyjobs.errors import printable, storage_error

HEADER = json.dumps({"schema_version": SCHEMA_VERSION}).encode() + b"\n"
# Reading the history backwards, a block at a time.
_BLOCK = 64 * 1024
#: The largest pid Linux gives (PID_MAX_LIMIT). A bigger or negative pid in a file is no
#: process of ours and must never reach kill(): pid -1 is every process we may signal.
_PID_MAX = 1 << 22
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: How a tombstone line ends: after its name, where a record's line goes on with its fields.
_TOMB_END = b', "removed": true}'


def read(path: Path) -> bytes | None:
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
    Searched from the end a block at a time: the cost is how far back the job ended (or was
    removed), not the history's size."""
    path = paths.history_path(root)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise storage_error(exc, "read") from exc
    needle = b'\n{"name": ' + json.dumps(name).encode() + b", "
    try:
        pos, tail = os.fstat(fd).st_size, b""
        while pos > 0:
            size = min(_BLOCK, pos)
            pos -= size
            chunk = os.pread(fd, size, pos) + tail
            # Whole lines only: the first one may go on in the block before (kept as ``tail``).
            cut = chunk.find(b"\n") if pos > 0 else 0
            body, tail = (chunk[cut:], chunk[:cut]) if pos > 0 else (b"\n" + chunk, b"")
            if cut == -1:
                body, tail = b"", chunk
            hit = body.rfind(needle)
            while hit != -1:
                end = body.find(b"\n", hit + 1)
                line = body[hit + 1 : None if end == -1 else end]
                if is_tombstone(line):
                    return None
                record = parse_line(line, path)
                if record is not None:
                    return record
                hit = body.rfind(needle, 0, hit)
    finally:
        os.close(fd)
    return None


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


def append(path: Path, records: Iterable[JobRecord], removed: Iterable[str] = ()) -> None:
    """Append tombstones for the ``removed`` names, then records, as whole lines, fsynced; a
    failed append is cut back off the file."""
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
    finally:
        os.close(fd)


def write(path: Path, records: Iterable[JobRecord]) -> None:
    """Replace the history with these records (the first release's migration)."""
    try:
        paths.write_atomic(path, HEADER + b"".join(_line(r) for r in records))
    except OSError as exc:
        raise storage_error(exc, "write the job history") from exc


def compact(path: Path, forgotten: set[str], active: set[str], ended: dict[str, JobRecord]) -> None:
    """Rewrite the history with one (the last) line per kept name: without tombstones, the
    names they removed, forgotten and active names; then the ``ended`` records."""
    keep: dict[str, bytes] = {}
    for line in (read(path) or b"").split(b"\n"):
        name = line_name(line)
        if name is None or name in forgotten or name in active or name in ended:
            continue
        if is_tombstone(line):
            keep.pop(name, None)
        elif _whole(line):  # a wrong but whole line is kept as it is: nothing is lost
            keep.pop(name, None)
            keep[name] = line + b"\n"
    body = b"".join(keep.values()) + b"".join(_line(r) for r in ended.values())
    try:
        paths.write_atomic(path, HEADER + body)
    except OSError as exc:
        raise storage_error(exc, "write the job history") from exc
