"""Tests for handyjobs.core.logs: tail and follow over real files, with real writer processes."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from handyjobs.core import logs
from handyjobs.core.logs import follow, tail, tail_bytes

PY = sys.executable


def naive_tail(data: bytes, lines: int) -> bytes:
    """The last lines of data, the obvious way."""
    if lines <= 0:
        return b""
    return b"".join(data.splitlines(keepends=True)[-lines:])


@pytest.mark.parametrize(
    ("data", "lines", "expected"),
    [
        (b"a\nb\nc\n", 2, b"b\nc\n"),
        (b"a\nb\nc", 2, b"b\nc"),  # no trailing newline: the partial line counts as a line
        (b"a\nb\nc", 1, b"c"),
        (b"a\nb\n", 10, b"a\nb\n"),  # fewer lines than asked: all of it
        (b"a\nb\n", 2, b"a\nb\n"),
        (b"a\nb\n", 0, b""),
        (b"\n\n\n", 2, b"\n\n"),
        (b"only", 3, b"only"),
        (b"", 3, b""),
        (b"10%\r50%\r100%\ndone\n", 1, b"done\n"),
    ],
)
def test_tail_bytes(tmp_path: Path, data: bytes, lines: int, expected: bytes) -> None:
    path = tmp_path / "job.log"
    path.write_bytes(data)
    assert tail_bytes(path, lines) == expected
    assert naive_tail(data, lines) == expected


def test_tail_of_a_missing_file(tmp_path: Path) -> None:
    assert tail_bytes(tmp_path / "nope.log", 10) == b""
    assert tail(tmp_path / "nope.log", 10) == (b"", 0)


def test_tail_across_block_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A tiny block size puts line ends on, before and after every block boundary.
    monkeypatch.setattr(logs, "_BLOCK", 7)
    rng = random.Random(1)
    path = tmp_path / "job.log"
    for trial in range(30):
        data = b"".join(b"x" * rng.randrange(0, 20) + b"\n" for _ in range(rng.randrange(0, 40)))
        if trial % 2:
            data += b"tail-without-newline"
        path.write_bytes(data)
        for lines in (0, 1, 2, 3, 7, 39, 100):
            assert tail_bytes(path, lines) == naive_tail(data, lines), (data, lines)


@pytest.mark.timeout(20)
def test_tail_of_a_huge_log_reads_only_its_end(tmp_path: Path) -> None:
    path = tmp_path / "huge.log"
    with path.open("wb") as f:
        f.write(b"first line\n")
        f.seek(2**30)  # a sparse 1 GiB log: reading it all would take seconds
        f.write(b"x\ny\nz\n")
    data, end = tail(path, 2)
    assert data == b"y\nz\n"
    assert end == path.stat().st_size


# A job appending to its log: each line waits until follow has copied the one before (that
# measures the delay), then a marker file says the job is done.
WRITER = """
import json, os, sys, time
log, out, done, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
delays = []
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
for i in range(count):
    line = f"line {i}\\n".encode()
    os.write(fd, line)
    start = time.monotonic()
    while line not in open(out, 'rb').read():
        if time.monotonic() - start > 5:
            sys.exit(f'follow did not copy {line!r} within 5 s')
        time.sleep(0.002)
    delays.append(time.monotonic() - start)
os.write(fd, b"last words\\n")  # written before the job counts as done: must be copied
open(done, 'w').write(json.dumps(delays))
"""


def start_writer(tmp_path: Path, count: int) -> subprocess.Popen[bytes]:
    """Start WRITER appending to tmp_path/job.log while follow copies to tmp_path/out.log."""
    return subprocess.Popen(
        [PY, "-c", WRITER, *(str(tmp_path / n) for n in ("job.log", "out.log", "done")), str(count)]
    )


@pytest.mark.timeout(60)
def test_follow_copies_lines_as_they_arrive_and_returns_when_done(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_bytes(b"before follow started\n")
    calls: list[float] = []

    def is_done() -> bool:
        calls.append(time.monotonic())
        return (tmp_path / "done").exists()

    writer = start_writer(tmp_path, 5)
    out_fd = os.open(tmp_path / "out.log", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        follow(log, out_fd, is_done)
    finally:
        os.close(out_fd)
    assert writer.wait(timeout=10) == 0
    # From the end of the file as it was: old content is not repeated.
    expected = "".join(f"line {i}\n" for i in range(5)) + "last words\n"
    assert (tmp_path / "out.log").read_text() == expected
    delays = json.loads((tmp_path / "done").read_text())
    assert max(delays) < 0.5, delays  # aims at < 0.1 s; generous for a busy machine
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert min(gaps, default=1.0) >= 0.45, gaps


@pytest.mark.timeout(60)
def test_follow_waits_for_the_log_to_appear(tmp_path: Path) -> None:
    writer = start_writer(tmp_path, 3)
    out_fd = os.open(tmp_path / "out.log", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        follow(tmp_path / "job.log", out_fd, lambda: (tmp_path / "done").exists())
    finally:
        os.close(out_fd)
    assert writer.wait(timeout=10) == 0
    # A log that appears after follow started is new from its first byte.
    assert (tmp_path / "out.log").read_text() == "line 0\nline 1\nline 2\nlast words\n"


def test_follow_from_an_offset(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_bytes(b"one\ntwo\nthree\n")
    data, end = tail(log, 1)
    with log.open("ab") as f:
        f.write(b"four\n")
    out = tmp_path / "out.log"
    out_fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(out_fd, data)
        follow(log, out_fd, lambda: True, start_offset=end)
    finally:
        os.close(out_fd)
    # tail then follow from its end: nothing lost, nothing twice.
    assert out.read_bytes() == b"three\nfour\n"


def test_follow_a_replaced_log(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_bytes(b"old run\n")
    calls: list[int] = []

    def is_done() -> bool:
        # The first check comes once the old content is copied: a restart replaces the log then.
        calls.append(1)
        if len(calls) == 1:
            new = tmp_path / "new.log"
            new.write_bytes(b"new run\n")
            new.replace(log)
        return len(calls) > 1

    out = tmp_path / "out.log"
    out_fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        follow(log, out_fd, is_done, start_offset=0)
    finally:
        os.close(out_fd)
    assert out.read_bytes() == b"old run\nnew run\n"


def test_follow_returns_quietly_on_a_broken_pipe(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_bytes(b"x" * 1_000_000)
    r, w = os.pipe()
    os.close(r)  # like `handyjobs logs -f job | head` after head exits
    try:
        follow(log, w, lambda: False, start_offset=0)  # never done: only the pipe can end it
    finally:
        os.close(w)


def test_follow_to_a_reader_that_stops_midway(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_bytes(b"".join(f"{i}\n".encode() for i in range(200_000)))
    head = subprocess.Popen(["head", "-n", "3"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert head.stdin is not None and head.stdout is not None
    try:
        follow(log, head.stdin.fileno(), lambda: False, start_offset=0)
    finally:
        head.stdin.close()
    assert head.stdout.read() == b"0\n1\n2\n"
    assert head.wait(timeout=10) == 0
