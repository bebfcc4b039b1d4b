"""On a real local Slurm: the warning before the time limit reaches ``trainer.should_stop``,
the example checkpoints, and ``--requeue`` starts the same run again from the checkpoint."""

from __future__ import annotations

import shutil
import time

import pytest
from conftest import REPO, Sandbox, log_of, show, wait_state
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
