"""What a job cost, end to end: ``show`` after real jobs, their memory and their GPUs.

The sampler itself, on real processes outside any job, is tested in
``tests/fast/test_sampler_procs.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import SLEEPER, Sandbox, log_of, wait_log, wait_state

MIB = 1 << 20


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
    wait_log(sandbox, "g", "pid")
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
