"""On a real local Slurm: the warning before the time limit reaches ``trainer.should_stop``,
the example checkpoints, and ``--requeue`` starts the same run again from the checkpoint."""

from __future__ import annotations

import shutil
import time

import pytest
from conftest import REPO, Sandbox, log_of, show, wait_state, wait_until
from test_slurm import box, slurm_conf  # noqa: F401  (fixtures shared with the Slurm tests)

pytestmark = pytest.mark.slurm


def test_time_limit_warning_checkpoints_and_requeue_resumes(box: Sandbox) -> None:  # noqa: F811
    shutil.copy(REPO / "examples" / "train.py", box.root / "train.py")
    ckpt = box.root / "ckpt.pt"
    # A one-minute limit with the warning 50 s before it: Slurm sends it within seconds of
    # the start (its check runs every few seconds here), long before the 500 epochs end.
    box.cli(
        "start",
        "--slurm",
        "--cpu",
        "--nproc",
        "2",
        "--time",
        "1",
        "--signal-before",
        "50",
        "--requeue",
        "--name",
        "tl",
        "train.py",
        "--",
        "--epochs",
        "500",
        "--ckpt",
        str(ckpt),
        check=True,
    )
    deadline = time.monotonic() + 150
    while "resumed from" not in log_of(box, "tl"):
        if time.monotonic() > deadline:  # say what happened instead, for whoever reads CI
            slurm_out = "".join(p.read_text() for p in (box.home / "jobs" / "tl").glob("*.out"))
            pytest.fail(f"no resume after 150 s: {show(box, 'tl')}\n{log_of(box, 'tl')}{slurm_out}")
        time.sleep(1.0)
    log = log_of(box, "tl")
    assert "trainer.should_stop is now True" in log
    assert f"saved {ckpt}" in log
    assert "asking Slurm to requeue job" in log
    assert ckpt.exists()
    # Requeued, not a new run: the same run (id) started again under the same Slurm job.
    rec = show(box, "tl")
    assert len(rec["runs"]) == 1
    box.cli("stop", "tl", check=True)
    assert wait_state(box, "tl", "stopped", timeout=60)["state"] == "stopped"


# The first start leaves early at the warning (requeued); the resumed one has little work
# left: the warning comes while it finishes, after its loop's last look at should_stop.
RESUMED = """
import os, time
from handyjobs import ParallelTrainer

trainer = ParallelTrainer()
start = os.environ.get("SLURM_RESTART_COUNT", "0")
print("start", start, flush=True)
if start == "0":
    while not trainer.should_stop:
        time.sleep(0.2)
    print("left early at the warning", flush=True)
else:
    while not trainer.stop_requested:
        time.sleep(0.2)
    print("work done", flush=True)
"""


def test_a_job_done_after_the_warning_of_its_resumed_run_is_not_requeued(box: Sandbox) -> None:  # noqa: F811
    box.write("resumed.py", RESUMED)
    box.cli(
        "start", "resumed.py", "--slurm", "--cpu", "--time", "1", "--signal-before", "50",
        "--requeue", "--name", "done", check=True,
    )  # fmt: skip

    def settled() -> dict[str, object] | None:
        rec = show(box, "done")
        ended = rec["state"] not in ("queued", "running")
        return rec if ended or "start 2" in log_of(box, "done") else None

    rec = wait_until(settled, 240, 1.0, "the job to end, or to start a third time")
    log = log_of(box, "done")
    assert "left early at the warning" in log and "work done" in log, log
    assert "start 2" not in log, log  # it ran a third time after its work was done
    assert rec["state"] == "succeeded", (rec, log)  # type: ignore[index]
    assert log.count("asking Slurm to requeue") == 1, log
    # Every view counts the one requeue alike: Slurm's restart count in the log's header of
    # the second start, show's "requeued 1x" and the record's.
    assert ", restart 1)" in log and ", restart 2)" not in log, log
    assert "requeued 1x" in box.cli("show", "done", check=True).stdout
    assert rec["runs"][-1]["cluster"]["restarts"] == 1, rec  # type: ignore[index]
