"""What a job cost: the sampler on real processes, found by their marker."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from conftest import wait_until

from handyjobs.jobside.sampler import ProcTable, Sampler, cpu_percent, usage

MIB = 1 << 20

HOLDER = """
import os, sys, time
block = b"\\1" * (int(sys.argv[1]) << 20)
while time.process_time() < 0.3:
    pass  # some CPU time, however busy the machine
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.02)
"""


def _holder(tmp_path: Path, mib: int, run_id: str, restarts: str = "0") -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "HANDYJOBS_RUN_ID": run_id,
        "TORCHELASTIC_RESTART_COUNT": restarts,
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(mib), str(tmp_path / "go")],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def test_usage_of_a_live_process_and_of_none() -> None:
    me = usage(os.getpid())
    assert me is not None and me.rss_bytes > 0 and me.hwm_bytes >= me.rss_bytes
    assert me.cpu_s > 0
    assert usage(2**22 + 12345) is None  # no such pid


def test_proc_table_finds_a_runs_processes_by_marker(tmp_path: Path) -> None:
    # Run ids of this test alone: another test run on the machine may hold processes too.
    run_a, run_b = f"run-a-{uuid.uuid4().hex[:8]}", f"run-b-{uuid.uuid4().hex[:8]}"
    table = ProcTable()
    one = _holder(tmp_path, 1, run_a, restarts="2")
    two = _holder(tmp_path, 1, run_b)
    try:
        found = table.scan()
        assert found[run_a] == [one.pid] and found[run_b] == [two.pid]
        assert table.scan(run_a) == {run_a: [one.pid]}
        assert table.restarts([one.pid]) == 2 and table.restarts([two.pid]) == 0
    finally:
        (tmp_path / "go").touch()
        one.wait(10)
        two.wait(10)
    assert run_a not in table.scan()


def test_cpu_percent_counts_only_processes_seen_twice() -> None:
    assert cpu_percent({1: 1.0, 2: 5.0}, {1: 1.5, 2: 5.5, 3: 100.0}, 1.0) == 100.0
    assert cpu_percent({}, {1: 3.0}, 1.0) == 0.0
    assert cpu_percent({1: 1.0}, {1: 2.0}, 0.0) == 0.0


def test_sampler_adds_up_memory_cpu_and_restarts(tmp_path: Path) -> None:
    run_c = f"run-c-{uuid.uuid4().hex[:8]}"  # this test's alone, as in the test above
    sampler = Sampler(run_c, gpus=False, interval_s=0.1)
    sampler.start()
    procs = [_holder(tmp_path, 60, run_c, restarts="1"), _holder(tmp_path, 40, run_c)]
    try:
        # generous: each look reads every process's environment, slow on a loaded machine
        wait_until(lambda: sampler.samples >= 3 and len(sampler.hwm) == 2, 30, what="looks")
    finally:
        (tmp_path / "go").touch()  # the holders end even when the test fails
        for proc in procs:
            proc.wait(10)
    cost = sampler.finish()
    assert cost.peak_rss_bytes >= 100 * MIB  # both held at once
    assert 60 * MIB <= cost.max_rss_bytes < 100 * MIB  # the larger one alone
    assert cost.cpu_time_s >= 0.3 and cost.restarts == 1 and cost.gpus == ()
    assert cost.samples >= 3 and cost.interval_s == 0.1
