"""Log rotation on files: the cap, the ``.1`` file, reading and following across a rotation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from handyjobs.core.logs import chunks, follow, tail_files
from handyjobs.jobside.rotation import MAX_ENV, Rotator, limit_from_env, previous


def write_through(rotator: Rotator, fd: int, data: bytes) -> None:
    rotator.write(data, lambda piece: _write_all(fd, piece))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def test_limit_from_env() -> None:
    assert limit_from_env({}) == (1024 << 20, None)
    assert limit_from_env({MAX_ENV: "2"}) == (2 << 20, None)
    assert limit_from_env({MAX_ENV: "0"}) == (None, None)
    assert limit_from_env({MAX_ENV: "0.01"})[0] == int(0.01 * (1 << 20))
    limit, note = limit_from_env({MAX_ENV: "lots"})
    assert limit == 1024 << 20 and note is not None and "lots" in note


def test_rotation_cuts_at_a_line_end_and_keeps_the_last_lines(tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    rotator = Rotator(str(path), fd, limit=1000)
    lines = [b"line %04d %s\n" % (i, b"x" * (i % 37)) for i in range(2000)]
    try:
        for i in range(0, len(lines), 7):  # pieces cut anywhere, as a pty hands them out
            blob = b"".join(lines[i : i + 7])
            write_through(rotator, fd, blob[:11])
            write_through(rotator, fd, blob[11:])
    finally:
        os.close(fd)
    live, old = path.read_bytes(), Path(previous(str(path))).read_bytes()
    assert old.endswith(b"\n")  # cut after a newline
    assert len(old) < 1000 + 7 * 60 and len(live) < 1000 + 7 * 60
    whole = b"".join(lines)
    assert whole.endswith(old + live)  # nothing lost at the end, nothing twice
    assert len(old + live) >= 1000
    for n in (1, 5, 30, 10_000):
        expected = b"".join(lines[-n:]) if n <= len((old + live).splitlines()) else old + live
        assert tail_files([previous(str(path)), path], n)[0] == expected
    assert b"".join(chunks([previous(str(path)), path], size=100)) == old + live


def test_a_line_without_newline_is_cut_past_the_slack(tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    rotator = Rotator(str(path), fd, limit=100)
    try:
        for _ in range(40):
            write_through(rotator, fd, b"\r" + b"y" * 65536)  # a bar that never ends its line
    finally:
        os.close(fd)
    assert Path(previous(str(path))).exists()
    assert path.stat().st_size < 2 << 20


# Writes 3,000 lines of 62 bytes into a log capped at 20,000 bytes (about 322 lines a file, so
# 9 rotations). Only one rotated file is kept, so a reader more than two files behind has lost
# lines for good; the writer therefore never gets more than 250 lines (under one file) ahead of
# what the follower has copied out, which leaves the follower up to two rotations between two
# looks, however slow a loaded machine makes it, and keeps the test deterministic.
FOLLOW_WRITER = """
import os, sys, time
log, go, out = sys.argv[1], sys.argv[2], sys.argv[3]
from handyjobs.jobside.rotation import Rotator
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
r = Rotator(log, fd, 20_000)
while not os.path.exists(go):
    time.sleep(0.01)
for i in range(3000):
    while i - os.path.getsize(out) // 62 > 250:
        time.sleep(0.002)
    data = b"line %05d %s\\n" % (i, b"z" * 50)
    r.write(data, lambda piece: os.write(fd, piece))
    if i % 20 == 0:
        time.sleep(0.002)
open(go + ".done", "w").close()
"""


@pytest.mark.timeout(60)
def test_follow_goes_on_across_rotations(tmp_path: Path) -> None:
    log, go = tmp_path / "output.log", tmp_path / "go"
    log.write_bytes(b"")
    out_path = tmp_path / "out"
    out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT, 0o600)
    writer = subprocess.Popen(
        [sys.executable, "-c", FOLLOW_WRITER, str(log), str(go), str(out_path)]
    )
    go.touch()
    try:
        follow(log, out_fd, lambda: (tmp_path / "go.done").exists(), start_offset=0)
    finally:
        os.close(out_fd)
    assert writer.wait(timeout=30) == 0
    got = out_path.read_bytes().splitlines()
    assert got == [b"line %05d %s" % (i, b"z" * 50) for i in range(3000)]
    assert Path(previous(str(log))).exists()  # it did rotate (about 9 times)
