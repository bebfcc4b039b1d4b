"""End to end: GPU jobs through the real CLI, real tmux and real processes, on fake GPUs.

There is no GPU here, so every test points ``HANDYJOBS_FAKE_GPUS`` at a JSON file of canned GPUs
(read afresh on every discovery) and rewrites it to change what the "driver" reports. The jobs
are tiny Python scripts that print the environment they received and then wait for a file the
test writes, so each test decides when its jobs end.
"""

from __future__ import annotations

import errno
import importlib.util
import itertools
import json
import os
import pwd
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Sandbox, wait_state, wait_until

#: How soon a queued job must take a GPU once it is free ("within a few seconds"); the
#: runner looks every second, so this leaves room for a busy machine.
PICKUP_S = 6.0

JOB_SCRIPT = '''\
"""A stand-in training job: print what it was given, then wait to be released."""
import os
import time
from pathlib import Path

here = Path(__file__).resolve().parent
job = os.environ["HANDYJOBS_JOB"]
rank = os.environ.get("LOCAL_RANK")
tag = job if rank is None else f"{job}.{rank}"
(here / f"ran-{tag}").write_text(str(os.getpid()))
for key in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "HANDYJOBS_GPU_IDS",
            "HANDYJOBS_NPROC", "LOCAL_RANK", "WORLD_SIZE"):
    # one write per line: torchrun's workers share the terminal, and print() may split a line
    os.write(1, f"{key}={os.environ.get(key, '<unset>')}\\n".encode())
deadline = time.monotonic() + 120
while not (here / f"done-{job}").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
print("released", flush=True)
'''

UUID_2 = "GPU-2b9e4c1a-77d0-4f3e-9a55-0c8d1e2f3a4b"


# ---- helpers ---------------------------------------------------------------------------------


def _gpu(index: int, used: int = 3, procs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One fake GPU in the discovery schema (see handyjobs.gpus.discovery)."""
    gpu: dict[str, Any] = {
        "index": index,
        "uuid": UUID_2 if index == 2 else f"GPU-fake-{index}",
        "name": "NVIDIA A100-SXM4-80GB",
        "memory_used_mib": used,
        "memory_total_mib": 81920,
        "utilization_pct": 10 * index,
    }
    if procs is not None:
        gpu["processes"] = procs
    return gpu


def _foreign(pid: int = 4242, user: str | None = "alice", mib: int = 5000) -> dict[str, Any]:
    """A compute process that belongs to someone else's work."""
    proc: dict[str, Any] = {"pid": pid, "used_memory_mib": mib, "name": "python"}
    if user is not None:
        proc["user"] = user
    return proc


def _set_gpus(box: Sandbox, *gpus: dict[str, Any]) -> Path:
    """(Re)write the sandbox's fake GPU file atomically and point the sandbox's CLI at it.

    Atomic, because runners of queued jobs read the file at any moment.
    """
    path = box.root / "gpus.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"gpus": list(gpus)}))
    os.replace(tmp, path)
    box.env["HANDYJOBS_FAKE_GPUS"] = str(path)
    return path


def _script(box: Sandbox) -> Path:
    """The job script, written once per sandbox."""
    path = box.root / "job.py"
    if not path.exists():
        path.write_text(JOB_SCRIPT)
    return path


def _start(
    box: Sandbox, name: str, *options: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``handyjobs start job.py --name NAME OPTIONS`` with this interpreter for the job.

    ``--cwd`` because the sandbox's environment carries the PWD of the test run.
    """
    return box.cli(
        "start",
        str(_script(box)),
        "--name",
        name,
        "--python",
        sys.executable,
        "--cwd",
        str(box.root),
        *options,
        env=env,
    )


def _started(box: Sandbox, name: str, *options: str, env: dict[str, str] | None = None) -> str:
    """Start a job that must be accepted; return what ``start`` printed."""
    proc = _start(box, name, *options, env=env)
    assert proc.returncode == 0, f"start {name} {options} exited {proc.returncode}: {proc.stderr}"
    return proc.stdout


def _refused(
    box: Sandbox, name: str, *options: str, code: int, env: dict[str, str] | None = None
) -> str:
    """Start a job that must be refused with ``code``; check nothing was left; return stderr."""
    proc = _start(box, name, *options, env=env)
    assert proc.returncode == code, (
        f"start {name} {options}: expected exit {code}, got {proc.returncode}\n"
        f"{proc.stdout}{proc.stderr}"
    )
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got: {proc.stderr}"
    assert lines[0].startswith("handyjobs: error: ")
    assert "Traceback" not in proc.stderr
    _assert_no_trace(box, name)
    return lines[0]


def _assert_no_trace(box: Sandbox, name: str) -> None:
    """A refused job leaves no record, no tmux session, no job folder and never runs."""
    listed = json.loads(box.cli("list", "--all", "--json", check=True).stdout)
    assert name not in {r["name"] for r in listed}
    assert name not in _sessions(box)
    assert not (box.home / "jobs" / name).exists()
    assert not (box.root / f"ran-{name}").exists()


def _show(box: Sandbox, name: str) -> dict[str, Any]:
    """The job's record, as ``show --json`` gives it."""
    doc: dict[str, Any] = json.loads(box.cli("show", name, "--json", check=True).stdout)
    return doc


def _state(box: Sandbox, name: str) -> str:
    """The job's state, as ``show --json`` gives it."""
    return str(_show(box, name)["state"])


def _wait_state(box: Sandbox, name: str, state: str, timeout: float = 20.0) -> dict[str, Any]:
    """Poll until the job is in ``state``; return its record as ``show --json`` gives it."""
    return wait_state(box, name, state, timeout=timeout)


def _waiting_for(box: Sandbox, name: str) -> str:
    """What a queued job waits for, as its record says."""
    from handyjobs.core.records import Wait
    from handyjobs.views import render

    wait = _show(box, name)["runs"][-1]["wait"]
    return render.wait_text(Wait.from_dict(wait)) if wait else ""


def _log(box: Sandbox, name: str) -> str:
    """The job's log so far (empty before it exists)."""
    path = box.home / "jobs" / name / "output.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _log_shows(box: Sandbox, name: str, text: str, count: int = 1) -> bool:
    """True once the job's log holds ``text`` ``count`` times; fails at once if the job ended."""
    log = _log(box, name)
    if log.count(text) >= count:
        return True
    if re.search(rf"\[handyjobs\] run \d+ of {name} ended", log):
        pytest.fail(f"job {name} ended before it printed {text!r}:\n{log}")
    return False


def _printed(box: Sandbox, name: str, key: str) -> list[str]:
    """Values of ``KEY=value`` lines the job printed (once per process), waiting for them."""
    wait_until(
        lambda: _log_shows(box, name, "WORLD_SIZE="), timeout=20, what=f"{name} to print its env"
    )
    # a job of several processes logs each rank's lines tagged "[rank N] "
    return re.findall(rf"^(?:\[rank \d+\] )?{key}=(.*?)\r?$", _log(box, name), re.MULTILINE)


def _release(box: Sandbox, name: str) -> None:
    """Let the job's script finish."""
    (box.root / f"done-{name}").touch()


def _sessions(box: Sandbox) -> set[str]:
    """The tmux sessions on the sandbox's socket."""
    proc = box.tmux("list-sessions", "-F", "#{session_name}")
    return set(proc.stdout.split()) if proc.returncode == 0 else set()


def _gone(pid: int) -> bool:
    """True when the pid is no longer a live process (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 :][:1] in ("Z", "X")


def _list_row(box: Sandbox, name: str) -> dict[str, str]:
    """The plain ``handyjobs list`` row of a job, by column."""
    lines = box.cli("list", check=True).stdout.splitlines()
    header = lines[0]
    starts = [header.index(col) for col in ("NAME", "STATE", "GPUS", "NPROC", "STARTED")]
    for line in lines[1:]:
        if line.split()[0] == name:
            cells = [line[a:b].strip() for a, b in itertools.pairwise(starts)]
            return dict(zip(("NAME", "STATE", "GPUS", "NPROC"), cells, strict=True))
    raise AssertionError(f"{name} is not in `handyjobs list`:\n{lines}")


# ---- handyjobs gpus --------------------------------------------------------------------------


def test_gpus_table_and_json_name_processes_users_and_the_holding_job(sandbox: Sandbox) -> None:
    me = pwd.getpwuid(os.getuid()).pw_name
    _set_gpus(
        sandbox,
        _gpu(0),
        _gpu(1, used=5000, procs=[_foreign()]),
        # no user in the file: read from /proc, where this test's own process is readable
        _gpu(2, used=800, procs=[_foreign(pid=os.getpid(), user=None, mib=700)]),
    )
    _started(sandbox, "holder", "--gpus", "0")

    table = sandbox.cli("gpus", check=True).stdout.splitlines()
    assert table[0].split()[:4] == ["GPU", "NAME", "MEMORY", "UTIL"]
    rows = {line.split()[0]: line for line in table[1:]}
    assert set(rows) == {"0", "1", "2"}
    assert "3/81920 MiB" in rows["0"] and " holder " in rows["0"]
    assert "5000/81920 MiB" in rows["1"] and "10%" in rows["1"] and "4242/alice" in rows["1"]
    assert f"{os.getpid()}/{me}" in rows["2"]

    doc = json.loads(sandbox.cli("gpus", "--json", check=True).stdout)
    assert doc["source"] == "fake"
    by_index = {g["index"]: g for g in doc["gpus"]}
    assert sorted(by_index) == [0, 1, 2]
    g0, g1, g2 = by_index[0], by_index[1], by_index[2]
    assert g0["name"] == "NVIDIA A100-SXM4-80GB"
    assert (g0["memory_used_mib"], g0["memory_total_mib"], g0["utilization_pct"]) == (3, 81920, 0)
    assert g0["job"] == "holder" and g0["processes"] == []
    assert g1["job"] is None and g1["utilization_pct"] == 10
    assert [(p["pid"], p["user"]) for p in g1["processes"]] == [(4242, "alice")]
    assert [(p["pid"], p["user"]) for p in g2["processes"]] == [(os.getpid(), me)]
    assert g2["uuid"] == UUID_2

    # Once the holder ends, no job holds GPU 0 any more.
    _release(sandbox, "holder")
    _wait_state(sandbox, "holder", "succeeded")
    doc = json.loads(sandbox.cli("gpus", "--json", check=True).stdout)
    assert doc["gpus"][0]["job"] is None


def test_gpus_without_any_nvidia_gpu_says_so_and_exits_0(sandbox: Sandbox) -> None:
    from handyjobs.gpus import discovery as gpus

    if gpus.discover({"PATH": os.environ.get("PATH", "")}).gpus:
        pytest.skip("a real NVIDIA GPU is visible here; this test is for machines without one")
    table = sandbox.cli("gpus")
    assert table.returncode == 0, table.stderr
    assert "no NVIDIA GPU" in table.stdout
    doc = json.loads(sandbox.cli("gpus", "--json", check=True).stdout)
    assert doc["gpus"] == [] and doc["source"] == "none" and doc["note"]
    # Asking for a GPU there is bad input with a way out, not a crash.
    line = _refused(sandbox, "nogpu", "--gpus", "0", code=2)
    assert "no NVIDIA GPU found" in line and "--cpu" in line


# ---- pinning ---------------------------------------------------------------------------------


def test_job_gets_pinned_gpus_in_the_order_typed_and_pci_bus_order(sandbox: Sandbox) -> None:
    """``--gpus 2,1`` keeps the order typed: the job's cuda:0 is GPU 2, as the user asked."""
    _set_gpus(sandbox, _gpu(0), _gpu(1), _gpu(2), _gpu(3))
    out = _started(sandbox, "pair", "--gpus", "2,1", "--nproc", "1")
    assert "on GPUs 2,1, 1 process" in out
    assert _printed(sandbox, "pair", "CUDA_VISIBLE_DEVICES") == ["2,1"]
    assert _printed(sandbox, "pair", "CUDA_DEVICE_ORDER") == ["PCI_BUS_ID"]
    assert _printed(sandbox, "pair", "HANDYJOBS_GPU_IDS") == ["2,1"]
    doc = _show(sandbox, "pair")
    assert doc["gpus"] == [2, 1] and doc["spec"]["gpus"] == [2, 1] and doc["nproc"] == 1

    # A UUID is accepted and becomes the index CUDA numbers in PCI bus order.
    out = _started(sandbox, "byuuid", "--gpus", UUID_2.upper(), "--force")
    assert "on GPUs 2, 1 process" in out
    assert _printed(sandbox, "byuuid", "CUDA_VISIBLE_DEVICES") == ["2"]
    assert _printed(sandbox, "byuuid", "CUDA_DEVICE_ORDER") == ["PCI_BUS_ID"]
    doc = _show(sandbox, "byuuid")
    assert doc["gpus"] == [2] and doc["nproc"] == 1
    # One GPU, one process: plain python, no torchrun in between.
    assert "torch.distributed.run" not in _log(sandbox, "byuuid")
    assert _printed(sandbox, "byuuid", "LOCAL_RANK") == ["<unset>"]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_one_process_per_pinned_gpu_by_default(sandbox: Sandbox) -> None:
    _set_gpus(sandbox, _gpu(0), _gpu(1), _gpu(2))
    out = _started(sandbox, "ddp", "--gpus", "0,2")
    assert "on GPUs 0,2, 2 processes" in out
    assert _show(sandbox, "ddp")["nproc"] == 2
    wait_until(
        lambda: _log_shows(sandbox, "ddp", "WORLD_SIZE=", count=2),
        timeout=60,
        what="both torchrun workers to print their env",
    )
    assert "torch.distributed.run" in _log(sandbox, "ddp")
    assert sorted(_printed(sandbox, "ddp", "LOCAL_RANK")) == ["0", "1"]
    assert _printed(sandbox, "ddp", "CUDA_VISIBLE_DEVICES") == ["0,2", "0,2"]
    assert _printed(sandbox, "ddp", "CUDA_DEVICE_ORDER") == ["PCI_BUS_ID"] * 2
    _release(sandbox, "ddp")
    _wait_state(sandbox, "ddp", "succeeded", timeout=60)


def test_gpu_that_does_not_exist_is_bad_input_and_leaves_nothing(sandbox: Sandbox) -> None:
    _set_gpus(sandbox, _gpu(0), _gpu(1), _gpu(2))
    line = _refused(sandbox, "nine", "--gpus", "9", code=2)
    assert "GPU 9 does not exist" in line and "GPUs 0-2" in line
    line = _refused(sandbox, "nine", "--gpus", "0,9,7", "--wait", code=2)
    assert "9" in line and "7" in line and "GPUs 0-2" in line
    assert not (sandbox.home / "registry.json").exists()
    assert _sessions(sandbox) == set()


# ---- no double booking -----------------------------------------------------------------------


def test_gpu_of_own_running_or_queued_job_is_refused_unless_forced(sandbox: Sandbox) -> None:
    _set_gpus(sandbox, _gpu(0), _gpu(1), _gpu(2), _gpu(3))
    _started(sandbox, "alpha", "--gpus", "0")
    # queued by number: waits for 0 (held by alpha) and keeps 1 for itself meanwhile
    out = _started(sandbox, "queuer", "--gpus", "1,0", "--nproc", "1", "--wait")
    assert "queued queuer" in out and "GPU 0 is held by job alpha" in out
    # queued by count: of the two GPUs it wants, only 2 is free; it keeps 2 meanwhile
    _started(sandbox, "busy3", "--gpus", "3")
    out = _started(sandbox, "counter", "--ngpus", "2", "--nproc", "1", "--wait")
    assert "queued counter" in out

    line = _refused(sandbox, "second", "--gpus", "0", code=1)
    assert "job alpha" in line and "--force" in line
    line = _refused(sandbox, "second", "--gpus", "1", code=1)
    assert "queued job queuer" in line
    line = _refused(sandbox, "second", "--gpus", "2", code=1)
    assert "queued job counter" in line

    # --force overrides each, and the job really gets the GPU it insisted on.
    _started(sandbox, "forced0", "--gpus", "0", "--force")
    _started(sandbox, "forced1", "--gpus", "1", "--force")
    assert _printed(sandbox, "forced0", "CUDA_VISIBLE_DEVICES") == ["0"]
    assert _printed(sandbox, "forced1", "CUDA_VISIBLE_DEVICES") == ["1"]
    assert _state(sandbox, "queuer") == "queued" and _state(sandbox, "counter") == "queued"


def test_gpu_busy_with_foreign_work_is_refused_unless_forced(sandbox: Sandbox) -> None:
    _set_gpus(
        sandbox,
        _gpu(0, used=5000, procs=[_foreign()]),
        _gpu(1, used=5000),
        _gpu(2),
        _gpu(3, used=2000),
    )
    line = _refused(sandbox, "onzero", "--gpus", "0", code=1)
    assert "pid 4242" in line and "alice" in line
    line = _refused(sandbox, "onone", "--gpus", "1", code=1)
    assert "5000 MiB" in line and "threshold 1024 MiB" in line
    line = _refused(sandbox, "onthree", "--gpus", "2,3", code=1)
    assert "GPU 3 is busy: 2000 MiB" in line and "GPU 2" not in line
    # The threshold is the user's to set: above what is used, GPU 1 counts as free.
    _started(sandbox, "onone", "--gpus", "1", env={"HANDYJOBS_GPU_MEM_THRESHOLD_MIB": "8000"})
    # A job pinned to a free GPU next to busy ones starts.
    _started(sandbox, "ontwo", "--gpus", "2")
    # --force overrides someone else's process too.
    _started(sandbox, "onzero", "--gpus", "0", "--force")
    _started(sandbox, "onthree", "--gpus", "3", "--force")
    assert _printed(sandbox, "onzero", "CUDA_VISIBLE_DEVICES") == ["0"]
    assert _printed(sandbox, "onone", "CUDA_VISIBLE_DEVICES") == ["1"]
    assert _printed(sandbox, "onthree", "CUDA_VISIBLE_DEVICES") == ["3"]
    assert {"onzero", "onone", "ontwo", "onthree"} <= _sessions(sandbox)


def test_queued_job_takes_the_gpu_once_the_other_user_is_gone(sandbox: Sandbox) -> None:
    _set_gpus(sandbox, _gpu(0, used=5000, procs=[_foreign()]))
    out = _started(sandbox, "patient", "--gpus", "0", "--wait")
    assert "queued patient" in out and "pid 4242" in out
    wait_until(
        lambda: "queued: GPU 0 is busy" in _log(sandbox, "patient"),
        timeout=PICKUP_S,
        what="the queued job's session to look at the GPU",
    )
    _set_gpus(sandbox, _gpu(0))
    freed = time.monotonic()
    doc = _wait_state(sandbox, "patient", "running", timeout=PICKUP_S)
    assert time.monotonic() - freed < PICKUP_S
    assert doc["gpus"] == [0]
    assert _printed(sandbox, "patient", "CUDA_VISIBLE_DEVICES") == ["0"]


# ---- free choice -----------------------------------------------------------------------------


def test_ngpus_picks_the_lowest_free_gpus_and_records_them(sandbox: Sandbox) -> None:
    _set_gpus(sandbox, _gpu(0, used=5000, procs=[_foreign()]), _gpu(1), _gpu(2), _gpu(3))
    out = _started(sandbox, "pick2", "--ngpus", "2", "--nproc", "1")
    assert "on GPUs 1,2" in out
    doc = _show(sandbox, "pick2")
    assert doc["gpus"] == [1, 2] and doc["spec"]["ngpus"] == 2
    assert _printed(sandbox, "pick2", "CUDA_VISIBLE_DEVICES") == ["1,2"]

    line = _refused(sandbox, "pick2b", "--ngpus", "2", "--nproc", "1", code=1)
    assert "only 1 of the 2 GPUs asked for are free" in line and "--wait" in line
    line = _refused(sandbox, "pick5", "--ngpus", "5", code=2)
    assert "more GPUs than handyjobs may use here (4)" in line
    out = _started(sandbox, "pick1", "--ngpus", "1")
    assert "on GPUs 3, 1 process" in out


def test_handyjobs_gpus_limits_what_handyjobs_may_use(sandbox: Sandbox) -> None:
    _set_gpus(sandbox, _gpu(0), _gpu(1), _gpu(2), _gpu(3))
    sandbox.env["HANDYJOBS_GPUS"] = "2,3"
    line = _refused(sandbox, "outside", "--gpus", "1", code=2)
    assert "outside HANDYJOBS_GPUS=2,3" in line
    line = _refused(sandbox, "outside", "--gpus", "1", "--force", code=2)
    assert "outside HANDYJOBS_GPUS=2,3" in line
    line = _refused(sandbox, "toomany", "--ngpus", "3", code=2)
    assert "(2)" in line
    out = _started(sandbox, "first", "--ngpus", "1")
    assert "on GPUs 2," in out
    out = _started(sandbox, "second", "--ngpus", "1")
    assert "on GPUs 3," in out
    line = _refused(sandbox, "third", "--ngpus", "1", code=1)
    assert "only 0 of the 1 GPUs asked for are free" in line
    # ... though GPUs 0 and 1 are idle: a queued job waits for an allowed one.
    out = _started(sandbox, "third", "--ngpus", "1", "--wait")
    assert "queued third" in out
    _release(sandbox, "first")
    doc = _wait_state(sandbox, "third", "running", timeout=PICKUP_S + 5)
    assert doc["gpus"] == [2]


# ---- the queue -------------------------------------------------------------------------------


def test_queued_jobs_start_in_order_as_gpus_free_up(sandbox: Sandbox) -> None:
    _set_gpus(sandbox, _gpu(0), _gpu(1))
    _started(sandbox, "a", "--gpus", "0")
    out_b = _started(sandbox, "b", "--gpus", "0", "--wait")
    out_c = _started(sandbox, "c", "--gpus", "0", "--wait")
    assert "queued b (tmux session b): GPU 0 is held by job a" in out_b
    assert "queued c" in out_c
    for name in ("b", "c"):
        doc = _show(sandbox, name)
        assert doc["state"] == "queued" and doc["gpus"] == []
        assert {"gpu": 0, "kind": "held", "job": "a"} in doc["runs"][-1]["wait"]["blockers"]
        row = _list_row(sandbox, name)
        assert row["STATE"].startswith("queued #") and row["GPUS"] == "wait 0"
        assert name in _sessions(sandbox)  # its session waits for the GPU
    assert _list_row(sandbox, "a")["GPUS"] == "0"
    assert "queued (GPU 0 is held by job a)" in sandbox.cli("show", "c", check=True).stdout
    # a job on another GPU is not held up by the queue
    _started(sandbox, "other", "--gpus", "1")

    sandbox.cli("stop", "a", check=True)
    stopped = time.monotonic()
    doc = _wait_state(sandbox, "b", "running", timeout=PICKUP_S)
    assert time.monotonic() - stopped < PICKUP_S
    assert doc["gpus"] == [0]
    assert _printed(sandbox, "b", "CUDA_VISIBLE_DEVICES") == ["0"]
    # c looked again after b took the GPU, and still waits
    wait_until(
        lambda: "job b" in _waiting_for(sandbox, "c"), timeout=PICKUP_S, what="c to wait for b"
    )
    assert _state(sandbox, "c") == "queued"
    assert not (sandbox.root / "ran-c").exists()

    _release(sandbox, "b")
    _wait_state(sandbox, "b", "succeeded")
    ended = time.monotonic()
    doc = _wait_state(sandbox, "c", "running", timeout=PICKUP_S)
    assert time.monotonic() - ended < PICKUP_S
    assert doc["gpus"] == [0]
    assert _printed(sandbox, "c", "CUDA_VISIBLE_DEVICES") == ["0"]
    log = _log(sandbox, "c")
    assert "queued: GPU 0 is held by job a" in log and "queued: GPU 0 is held by job b" in log


def test_two_queued_jobs_race_for_one_freed_gpu(sandbox: Sandbox) -> None:
    fake = [_gpu(0), _gpu(1, used=5000, procs=[_foreign()])]
    _set_gpus(sandbox, *fake)
    _started(sandbox, "holder", "--gpus", "0")
    _started(sandbox, "first", "--ngpus", "1", "--wait")
    _started(sandbox, "second", "--ngpus", "1", "--wait")
    for name in ("first", "second"):
        assert _list_row(sandbox, name)["GPUS"] == "wait any 1"
    assert "pid 4242" in _waiting_for(sandbox, "second")

    sandbox.cli("stop", "holder", check=True)
    doc = _wait_state(sandbox, "first", "running", timeout=PICKUP_S)
    assert doc["gpus"] == [0]
    wait_until(
        lambda: "job first" in _waiting_for(sandbox, "second"),
        timeout=PICKUP_S,
        what="second to see that first took GPU 0",
    )
    assert _state(sandbox, "second") == "queued"

    # The other user's process ends: the driver stops listing it, and GPU 1 is picked up.
    _set_gpus(sandbox, fake[0], _gpu(1))
    freed = time.monotonic()
    doc = _wait_state(sandbox, "second", "running", timeout=PICKUP_S)
    assert time.monotonic() - freed < PICKUP_S
    assert doc["gpus"] == [1]
    assert _printed(sandbox, "first", "CUDA_VISIBLE_DEVICES") == ["0"]
    assert _printed(sandbox, "second", "CUDA_VISIBLE_DEVICES") == ["1"]


def test_stop_cancels_a_queued_job_which_never_runs(sandbox: Sandbox) -> None:
    _set_gpus(sandbox, _gpu(0))
    _started(sandbox, "a", "--gpus", "0")
    _started(sandbox, "q", "--gpus", "0", "--wait")
    assert "q" in _sessions(sandbox)
    stop = sandbox.cli("stop", "q", check=True)
    assert "stopped queued job q" in stop.stdout
    doc = _show(sandbox, "q")
    assert doc["state"] == "stopped" and doc["gpus"] == [] and doc["ended_at"]
    assert "q" not in _sessions(sandbox)

    # The GPU it waited for frees up: another job takes it, and q stays stopped.
    sandbox.cli("stop", "a", check=True)
    _started(sandbox, "later", "--gpus", "0")
    assert _printed(sandbox, "later", "CUDA_VISIBLE_DEVICES") == ["0"]
    assert _state(sandbox, "q") == "stopped"
    assert not (sandbox.root / "ran-q").exists()
    assert "CUDA_VISIBLE_DEVICES" not in _log(sandbox, "q")
    again = sandbox.cli("stop", "q")
    assert again.returncode == 1 and "not running" in again.stderr


# ---- stop releases the GPUs ------------------------------------------------------------------


def _job_pid(box: Sandbox, name: str) -> int:
    path = box.root / f"ran-{name}"
    wait_until(path.exists, timeout=20, what=f"{name} to run")
    wait_until(path.read_text, timeout=5, what=f"{name} to write its pid")
    return int(path.read_text())


def test_stop_ends_a_gpu_job_and_ignores_other_processes_on_its_gpu(sandbox: Sandbox) -> None:
    _set_gpus(sandbox, _gpu(0), _gpu(1))
    _started(sandbox, "job", "--gpus", "1")
    pid = _job_pid(sandbox, "job")
    assert _show(sandbox, "job")["runs"][-1]["pids"]["main"] == pid
    # Someone else (here: this test process) starts using the job's GPU; stop leaves it be.
    _set_gpus(sandbox, _gpu(0), _gpu(1, used=5004, procs=[_foreign(pid=os.getpid(), user=None)]))
    stop = sandbox.cli("stop", "job")
    assert stop.returncode == 0, stop.stderr
    assert "stopped job job" in stop.stdout
    assert _gone(pid)
    assert _show(sandbox, "job")["state"] == "stopped"
    gpu1 = json.loads(sandbox.cli("gpus", "--json", check=True).stdout)["gpus"][1]
    assert gpu1["job"] is None


def test_stop_reports_a_gpu_process_the_driver_still_lists_by_pid(sandbox: Sandbox) -> None:
    _set_gpus(sandbox, _gpu(0))
    _started(sandbox, "stuck", "--gpus", "0")
    pid = _job_pid(sandbox, "stuck")
    # The driver lists the job's process on its GPU, and keeps listing it after it is killed.
    _set_gpus(sandbox, _gpu(0, used=6000, procs=[_foreign(pid=pid, user=None)]))
    stop = sandbox.cli("stop", "stuck")
    assert stop.returncode == 1, stop.stdout + stop.stderr
    line = stop.stderr.strip()
    assert len(line.splitlines()) == 1
    assert f"GPU 0 still has processes {pid}" in line and "end them by pid" in line
    assert _gone(pid)
    assert _show(sandbox, "stuck")["state"] == "stopped"


def _serve(fifo: Path, *gpus: dict[str, Any], timeout: float = 20.0) -> None:
    """Hand one fake GPU file to the next process that opens the FIFO to read it."""

    def reader_there() -> int | None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nobody reads yet
                return None
            raise

    def reader_gone() -> bool:
        probe = reader_there()
        if probe is None:
            return True
        os.close(probe)
        return False

    fd = wait_until(reader_there, timeout=timeout, what=f"a read of {fifo.name}")
    assert isinstance(fd, int)
    try:
        os.set_blocking(fd, True)
        os.write(fd, json.dumps({"gpus": list(gpus)}).encode())
    finally:
        os.close(fd)
    # The next read must get a file of its own, not the rest of this one.
    wait_until(reader_gone, timeout=timeout, what=f"the reader to close {fifo.name}")


def test_stop_waits_for_the_driver_to_release_the_gpu(sandbox: Sandbox) -> None:
    """The driver may list a killed process for a moment: stop looks again before it reports.

    ``stop`` reads its fake GPUs from a FIFO, so the test answers each look in turn.
    """
    _set_gpus(sandbox, _gpu(0))
    _started(sandbox, "slow", "--gpus", "0")
    pid = _job_pid(sandbox, "slow")
    fifo = sandbox.root / "driver.fifo"
    os.mkfifo(fifo)
    stop = subprocess.Popen(
        [sys.executable, "-m", "handyjobs", "stop", "slow"],
        env={**sandbox.env, "HANDYJOBS_FAKE_GPUS": str(fifo)},
        cwd=sandbox.root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # First look: the job's process, already killed, is still listed on its GPU.
        _serve(fifo, _gpu(0, used=6000, procs=[_foreign(pid=pid, user=None)]))
        assert _gone(pid)
        assert stop.poll() is None, stop.communicate()
        # Next look: the driver has caught up.
        _serve(fifo, _gpu(0))
        out, err = stop.communicate(timeout=30)
    finally:
        if stop.poll() is None:
            stop.kill()
            stop.communicate()
    assert stop.returncode == 0, err
    assert "stopped job slow" in out


def test_stop_checks_each_gpu_is_back_to_how_it_was_when_booked(sandbox: Sandbox) -> None:
    _set_gpus(sandbox, _gpu(0, used=300))
    _started(sandbox, "held", "--gpus", "0")
    baseline = _show(sandbox, "held")["runs"][-1]["baseline"]
    assert baseline == [{"gpu": 0, "memory_used_mib": 300, "pids": []}]
    # The job's processes are gone, but the GPU keeps 2 GiB more than when it was booked.
    _set_gpus(sandbox, _gpu(0, used=2348))
    stop = sandbox.cli("stop", "held")
    assert stop.returncode == 1
    assert "GPU 0 still has 2048 MiB more memory than before the job" in stop.stderr
    # In a container whose driver reports host pids, a process that was not there counts.
    _set_gpus(sandbox, _gpu(1, used=4))
    path = sandbox.root / "gpus.json"
    fake = json.loads(path.read_text())

    def rewrite() -> None:
        (sandbox.root / "next.json").write_text(json.dumps(fake))
        os.replace(sandbox.root / "next.json", path)

    fake["pids_comparable"] = False
    rewrite()
    _started(sandbox, "boxed", "--gpus", "1")
    fake["gpus"][0]["processes"] = [{"pid": 987654, "used_memory_mib": 10, "name": "python"}]
    rewrite()
    stop = sandbox.cli("stop", "boxed")
    assert stop.returncode == 1 and "GPU 1 still has processes 987654" in stop.stderr
