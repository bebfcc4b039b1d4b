"""The one /proc reader: a real process's state, start time, CPU and memory, and a zombie's."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from handyjobs import procfs


def test_a_live_process_is_read() -> None:
    me = os.getpid()
    assert procfs.state(me) in (b"R", b"S")
    ticks = procfs.start_ticks(me)
    assert ticks is not None and ticks > 0
    assert procfs.start_ticks(me, live_only=True) == ticks
    used = procfs.cpu_and_rss(me)
    assert used is not None
    cpu_s, rss = used
    assert cpu_s > 0 and rss > 1024 * 1024  # a Python interpreter holds megabytes


def test_a_command_name_with_spaces_and_parentheses_is_skipped_whole() -> None:
    # The name is field 2 of stat, in parentheses: ") (" inside it must not shift the fields.
    code = "open('/proc/self/comm', 'w').write('a) (b c'); import time; time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 20
        comm = Path(f"/proc/{proc.pid}/comm")
        while comm.read_text().strip() != "a) (b c":
            assert time.monotonic() < deadline, "the child never renamed itself"
            time.sleep(0.01)
        assert procfs.state(proc.pid) in (b"R", b"S")
        assert procfs.start_ticks(proc.pid) is not None
    finally:
        proc.kill()
        proc.wait()


def test_a_zombie_is_not_live_and_a_gone_pid_reads_none() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 20
    while procfs.state(proc.pid) != b"Z":  # exited, not yet reaped
        assert time.monotonic() < deadline, "the child never became a zombie"
        time.sleep(0.01)
    assert procfs.start_ticks(proc.pid) is not None
    assert procfs.start_ticks(proc.pid, live_only=True) is None
    proc.wait()
    assert procfs.state(proc.pid) is None
    assert procfs.stat_fields(proc.pid) is None
