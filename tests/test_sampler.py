"""What a job cost: the sampler on real processes, and ``show`` after real jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import SLEEPER, Sandbox, log_of, wait_state, wait_until

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
    table = ProcTable()
    one = _holder(tmp_path, 1, "run-a", restarts="2")
    two = _holder(tmp_path, 1, "run-b")
    try:
        found = table.scan()
        assert found["run-a"] == [one.pid] and found["run-b"] == [two.pid]
        assert table.scan("run-a") == {"run-a": [one.pid]}
        assert table.restarts([one.pid]) == 2 and table.restarts([two.pid]) == 0
    finally:
        (tmp_path / "go").touch()
        one.wait(10)
        two.wait(10)
    assert "run-a" not in table.scan()


def test_cpu_percent_counts_only_processes_seen_twice() -> None:
    assert cpu_percent({1: 1.0, 2: 5.0}, {1: 1.5, 2: 5.5, 3: 100.0}, 1.0) == 100.0
    assert cpu_percent({}, {1: 3.0}, 1.0) == 0.0
    assert cpu_percent({1: 1.0}, {1: 2.0}, 0.0) == 0.0


def test_sampler_adds_up_memory_cpu_and_restarts(tmp_path: Path) -> None:
    sampler = Sampler("run-c", gpus=False, interval_s=0.1)
    sampler.start()
    procs = [_holder(tmp_path, 60, "run-c", restarts="1"), _holder(tmp_path, 40, "run-c")]
    wait_until(lambda: sampler.samples >= 3 and len(sampler.hwm) == 2, 10, what="looks")
    (tmp_path / "go").touch()
    for proc in procs:
        proc.wait(10)
    cost = sampler.finish()
    assert cost.peak_rss_bytes >= 100 * MIB  # both held at once
    assert 60 * MIB <= cost.max_rss_bytes < 100 * MIB  # the larger one alone
    assert cost.cpu_time_s >= 0.3 and cost.restarts == 1 and cost.gpus == ()
    assert cost.samples >= 3 and cost.interval_s == 0.1


def test_show_reports_the_peak_memory_of_a_job_that_allocates_500_mb(sandbox: Sandbox) -> None:
    sandbox.write(
        "hog.py",
        "import time\nblock = b'\\1' * (500 << 20)  # written, so every page is resident\n"
        "print('holding', len(block), flush=True)\ntime.sleep(3)\n",
    )
    sandbox.cli("start", "hog.py", "--name", "hog", check=True)
    rec = wait_state(sandbox, "hog", "succeeded", "failed", timeout=60)
    assert rec["state"] == "succeeded", log_of(sandbox, "hog")
    cost = rec["cost"]
    assert cost == rec["runs"][-1]["cost"]
    assert cost["max_rss_bytes"] >= 500 * MIB  # the process's own peak (Slurm's MaxRSS)
    assert cost["peak_rss_bytes"] >= 500 * MIB  # seen by a look while it held the block
    assert cost["max_rss_bytes"] < 2048 * MIB and cost["peak_rss_bytes"] < 2048 * MIB
    assert cost["samples"] >= 2 and cost["cpu_time_s"] > 0 and cost["restarts"] == 0
    text = sandbox.cli("show", "hog", check=True).stdout
    memory = next(line for line in text.splitlines() if line.startswith("memory"))
    peak = float(memory.split("peak ")[1].split()[0])
    assert memory.split("peak ")[1].split()[1] == "MiB" and 500 <= peak < 2048, memory
    assert any(line.startswith("cpu time") for line in text.splitlines())


def test_gpu_use_is_sampled_by_the_jobs_pids(sandbox: Sandbox, tmp_path: Path) -> None:
    fake = tmp_path / "gpus.json"

    def gpus(procs: list[dict[str, object]]) -> None:
        doc = {
            "gpus": [
                {
                    "index": i,
                    "name": "NVIDIA A100-SXM4-80GB",
                    "memory_used_mib": 4 + sum(int(p["used_memory_mib"]) for p in procs if i == 0),  # type: ignore[call-overload]
                    "memory_total_mib": 81920,
                    "utilization_pct": 50 if i == 0 else 0,
                    "processes": procs if i == 0 else [],
                }
                for i in range(2)
            ]
        }
        tmp = fake.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(fake)  # read afresh on every look: never half a file

    gpus([])
    env = {"HANDYJOBS_FAKE_GPUS": str(fake)}
    sandbox.write("sleep.py", SLEEPER)
    flag = sandbox.root / "go"
    sandbox.cli(
        "start", "sleep.py", "--gpus", "0", "--name", "g", "--", str(flag), env=env, check=True
    )
    wait_until(lambda: "pid" in log_of(sandbox, "g"), what="job output")
    pid = int(log_of(sandbox, "g").split("pid ")[1].split()[0])
    gpus([{"pid": pid, "used_memory_mib": 1234}])
    time.sleep(2.5)  # the runner looks once a second: let it see the job on the GPU twice
    flag.touch()
    rec = wait_state(sandbox, "g", "succeeded", "failed", timeout=60)
    assert rec["cost"]["gpus"][0]["index"] == 0
    assert rec["cost"]["gpus"][0]["peak_memory_mib"] == 1234
    assert rec["cost"]["gpus"][0]["mean_utilization_pct"] == 50.0
    assert [g["index"] for g in rec["cost"]["gpus"]] == [0]  # GPU 1 never had the job's pids
    text = sandbox.cli("show", "g", check=True, env=env).stdout.splitlines()
    gpu_line = next(line for line in text if line.startswith("gpu 0 "))
    assert gpu_line.split(None, 2)[2] == "peak 1234 MiB by the job, 50% mean use"
