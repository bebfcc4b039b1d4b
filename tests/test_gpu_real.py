"""On a machine with NVIDIA GPUs: the real CLI, real tmux and real jobs through the real driver.

Every test here is marked ``gpu`` and skips with the reason when no NVIDIA GPU is visible (as
on the project's own machines and in CI); ``scripts/gpu_check.sh`` runs them where there is one.
They take one free GPU, so they work on a machine with one GPU and on one with several, and
leave it as they found it. Jobs need a CUDA build of torch in the Python that runs the tests.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Sandbox, wait_until

from handyjobs.core import booking
from handyjobs.gpus import discovery as gpus
from handyjobs.gpus.discovery import Discovery, GpuInfo

pytestmark = pytest.mark.gpu

#: How far `handyjobs gpus` and nvidia-smi may differ in used memory (MiB): two looks a moment
#: apart. NVML's v1 memory, which counts the driver's reservation, is hundreds of MiB above.
USED_TOLERANCE_MIB = 64
#: What the test job holds on its GPU.
HOLD_MIB = 512

HOLDER = """\
\"\"\"Hold some GPU memory on the GPU handyjobs gave this job, then wait to be stopped.\"\"\"
import os
import sys
import time

import torch

block = torch.ones({mib} * 2**20, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
ready = sys.argv[1]
seen = [os.environ.get("CUDA_VISIBLE_DEVICES", ""), torch.cuda.device_count(), os.getpid()]
with open(ready + ".tmp", "w") as f:
    f.write(" ".join(map(str, seen)))
os.replace(ready + ".tmp", ready)
print("holding", block.numel() // 2**20, "MiB", flush=True)
deadline = time.monotonic() + 600  # never outlive a broken test for long
while time.monotonic() < deadline:
    time.sleep(0.2)
""".replace("{mib}", str(HOLD_MIB))

BF16 = """\
\"\"\"A few bf16 steps on the one GPU the job was given.\"\"\"
import os

import torch

assert torch.cuda.device_count() == 1, torch.cuda.device_count()
model = torch.nn.Linear(256, 256).cuda()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(64, 256, device="cuda")
for _ in range(5):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = model(x)
        loss = y.float().pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
assert y.dtype == torch.bfloat16, y.dtype
print("bf16 ok on", torch.cuda.get_device_name(0),
      "CUDA_VISIBLE_DEVICES=" + os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
"""


def _real_env() -> dict[str, str]:
    """This environment with no fake GPUs and no stand-in driver."""
    env = {k: v for k, v in os.environ.items() if k not in (gpus.FAKE_ENV, "HANDYJOBS_TEST_NVML")}
    fake = str(Path(__file__).parent / "fake_nvml")
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != fake]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


@pytest.fixture
def machine() -> Discovery:
    """What the real driver shows; skips when no NVIDIA GPU is visible."""
    found = gpus.discover(_real_env())
    if not found.gpus:
        pytest.skip(f"no NVIDIA GPU visible ({found.note})")
    return found


@pytest.fixture
def free_gpu(machine: Discovery) -> GpuInfo:
    """A GPU nobody uses (the lowest index), as it looks before the test; skips when none, or
    when the Python that runs jobs has no CUDA build of torch."""
    free = booking.free_gpus(machine, {}, booking.policy_from_env(_real_env()))
    if not free:
        pytest.skip("every GPU here is busy with other work; run on an idle machine")
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.stdout.strip() != "True":
        why = probe.stdout.strip() or probe.stderr.strip().splitlines()[-1:]
        pytest.skip(f"torch in {sys.executable} cannot use CUDA ({why})")
    return machine.by_index()[free[0]]


def _gpus_json(box: Sandbox) -> dict[str, Any]:
    return json.loads(box.cli("gpus", "--json", check=True).stdout)  # type: ignore[no-any-return]


def _entry(doc: dict[str, Any], index: int) -> dict[str, Any]:
    (entry,) = [g for g in doc["gpus"] if g["index"] == index]
    return entry  # type: ignore[no-any-return]


def _state(box: Sandbox, name: str) -> str:
    return str(json.loads(box.cli("show", name, "--json", check=True).stdout)["state"])


def _smi(query: str) -> list[list[str]]:
    """One nvidia-smi CSV query, as rows of stripped fields."""
    out = subprocess.run(
        ["nvidia-smi", query, "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [[f.strip() for f in row] for row in csv.reader(io.StringIO(out)) if row]


def _start_holder(box: Sandbox, gpu: int, name: str) -> tuple[int, str]:
    """Start the holder job on ``gpu``; once it holds memory, return its pid and what it saw
    ("<CUDA_VISIBLE_DEVICES> <device count>")."""
    box.write("holder.py", HOLDER)
    ready = box.root / f"ready-{name}"
    box.cli("start", "holder.py", "--gpus", str(gpu), "--name", name, "--", str(ready), check=True)
    wait_until(ready.exists, 180, 0.2, f"{name} to hold GPU memory")
    visible, count, pid = ready.read_text().split()
    return int(pid), f"{visible} {count}"


def _back_to(before: GpuInfo, env: dict[str, str]) -> bool:
    """Whether the GPU's processes and memory are where they were in ``before``."""
    now = gpus.discover(env).by_index()[before.index]
    return {p.pid for p in now.processes} == {p.pid for p in before.processes} and abs(
        now.memory_used_mib - before.memory_used_mib
    ) <= gpus.RELEASE_SLACK_MIB


def test_cli_gpus_json_agrees_with_nvidia_smi(sandbox: Sandbox, machine: Discovery) -> None:
    if shutil.which("nvidia-smi") is None:
        pytest.skip("nvidia-smi is not on PATH")
    doc = _gpus_json(sandbox)
    assert doc["source"] == "nvml", doc["note"]
    rows = _smi("--query-gpu=index,uuid,name,memory.used,memory.total,mig.mode.current")
    assert [(g["index"], g["uuid"], g["name"], g["memory_total_mib"]) for g in doc["gpus"]] == [
        (int(r[0]), r[1], r[2], int(r[4])) for r in rows
    ]
    for g, r in zip(doc["gpus"], rows, strict=True):
        assert g["mig"] == (r[5] == "Enabled")
        if not g["mig"]:  # a MIG parent may refuse a non-root caller its memory, in both
            assert abs(g["memory_used_mib"] - int(r[3])) <= USED_TOLERANCE_MIB, (g, r)
    by_uuid: dict[str, set[int]] = {}
    for uuid, pid in _smi("--query-compute-apps=gpu_uuid,pid"):
        by_uuid.setdefault(uuid, set()).add(int(pid))
    for g in doc["gpus"]:
        assert {p["pid"] for p in g["processes"]} == by_uuid.get(g["uuid"], set())


def test_job_holds_its_gpu_and_stop_gives_it_back(sandbox: Sandbox, free_gpu: GpuInfo) -> None:
    index = free_gpu.index
    pid, seen = _start_holder(sandbox, index, "x")
    assert seen == f"{index} 1"  # CUDA_VISIBLE_DEVICES names the one GPU, and CUDA sees one

    def holding() -> dict[str, Any] | None:
        doc = _gpus_json(sandbox)
        entry = _entry(doc, index)
        if doc["pids_comparable"]:
            held = any(p["pid"] == pid for p in entry["processes"])
        else:  # a container on an older driver lists the host's pid for the job
            held = len(entry["processes"]) > len(free_gpu.processes)
        return doc if held else None

    doc = wait_until(holding, 60, 0.5, f"GPU {index} to list the job's process")
    assert isinstance(doc, dict)
    entry = _entry(doc, index)
    assert entry["job"] == "x"
    assert entry["memory_used_mib"] >= free_gpu.memory_used_mib + HOLD_MIB
    if doc["pids_comparable"]:
        (proc,) = [p for p in entry["processes"] if p["pid"] == pid]
        assert proc["used_memory_mib"] is None or proc["used_memory_mib"] >= HOLD_MIB
        assert proc["user"] is not None  # /proc vouched for our own process
    table = sandbox.cli("gpus", check=True).stdout
    (row,) = [line for line in table.splitlines()[1:] if line.split()[0] == str(index)]
    assert " x " in f" {row} "

    sandbox.cli("stop", "x", check=True)  # exit 0: stop found the GPU released
    env = _real_env()
    wait_until(lambda: _back_to(free_gpu, env), 30, 0.5, f"GPU {index} to be as before")
    after = gpus.discover(env)
    assert gpus.leftovers(Discovery("nvml", (free_gpu,)), after, [index], {pid}) == []


def test_held_gpu_refused_and_queued_job_starts_when_it_frees(
    sandbox: Sandbox, free_gpu: GpuInfo
) -> None:
    index = free_gpu.index
    _start_holder(sandbox, index, "holder")
    sandbox.write("holder.py", HOLDER)
    refused = sandbox.cli("start", "holder.py", "--gpus", str(index), "--name", "refused")
    assert refused.returncode == 1
    assert f"GPU {index} is held by job holder" in refused.stderr

    ready = sandbox.root / "ready-queued"
    queued = sandbox.cli(
        "start", "holder.py", "--gpus", str(index), "--wait", "--name", "queued", "--",
        str(ready),
    )  # fmt: skip
    assert queued.returncode == 0, queued.stderr
    assert _state(sandbox, "queued") == "queued"
    sandbox.cli("stop", "holder", check=True)
    wait_until(ready.exists, 180, 0.2, "the queued job to start and hold the GPU")
    assert _state(sandbox, "queued") == "running"
    sandbox.cli("stop", "queued", check=True)
    env = _real_env()
    wait_until(lambda: _back_to(free_gpu, env), 30, 0.5, f"GPU {index} to be as before")


def test_bf16_job_pinned_to_one_gpu(sandbox: Sandbox, free_gpu: GpuInfo) -> None:
    sandbox.write("bf16.py", BF16)
    index = str(free_gpu.index)
    sandbox.cli("start", "bf16.py", "--gpus", index, "--name", "bf16", check=True)
    done = sandbox.cli("wait", "bf16", timeout=300)
    log = sandbox.cli("logs", "bf16", check=True).stdout
    assert done.returncode == 0, log
    assert f"bf16 ok on {free_gpu.name} CUDA_VISIBLE_DEVICES={index}" in log
