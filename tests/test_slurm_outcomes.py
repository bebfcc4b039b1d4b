"""On a real local Slurm: outcomes that never lie (a node failure, a job stopped early by the
time-limit warning, a slow teardown after it, a stop Slurm could not take, an --exec script)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Sandbox, log_of, show, wait_state
from test_slurm import box, nodes_back, slurm_conf, slurm_out  # noqa: F401  (fixtures shared with the Slurm tests)

pytestmark = pytest.mark.slurm

SLEEP_EXIT = """
import sys, time
time.sleep(float(sys.argv[1]))
sys.exit(int(sys.argv[2]))
"""

# Listens for Slurm's warning, then says it leaves early and leaves cleanly (what a trainer
# does when should_stop turns True).
WARNED = """
import os, signal, sys, time
got = []
signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
deadline = time.time() + 120
while not got and time.time() < deadline:
    time.sleep(0.2)
print("warned, saving and leaving" if got else "no warning came", flush=True)
if got:
    with open(os.environ["HANDYJOBS_STOPPED_FILE"], "a") as f:
        f.write("SIGUSR1\\n")
if got and len(sys.argv) > 1:
    # A slow teardown: CPython gives SIGUSR1 back its default at interpreter shutdown.
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    time.sleep(float(sys.argv[1]))
    print("teardown done", flush=True)
"""


def test_a_node_failure_is_lost_with_no_exit_code_and_wait_fails(
    box: Sandbox,  # noqa: F811
    nodes_back: None,  # noqa: F811
) -> None:
    box.write("job.py", SLEEP_EXIT)
    # The user asks for no requeue (the local cluster, like most sites, requeues by default).
    box.cli(
        "start", "job.py", "300", "0", "--slurm", "--cpu", "--name", "nf",
        "--slurm-arg=--no-requeue", check=True,
    )  # fmt: skip
    wait_state(box, "nf", "running", timeout=90)
    job_id = show(box, "nf")["runs"][-1]["handle"]["job_id"]
    node = slurm_out(box, "squeue", "-h", "-j", job_id, "-o", "%N").strip()
    slurm_out(box, "scontrol", "update", f"nodename={node}", "state=down", "reason=handyjobs-test")
    rec = wait_state(box, "nf", "lost", "failed", "succeeded", "stopped", timeout=90)
    assert rec["state"] == "lost", rec
    assert rec["exit_code"] is None, rec  # srun's 0 is not the outcome of a lost run
    proc = box.cli("wait", "nf", "--timeout", "10")
    assert proc.returncode not in (0, 124), proc.stdout


def test_a_job_stopped_early_by_the_warning_fails_as_slurms_timeout(box: Sandbox) -> None:  # noqa: F811
    box.write("warned.py", WARNED)
    box.cli(
        "start", "warned.py", "--slurm", "--cpu", "--time", "1", "--signal-before", "50",
        "--name", "early", check=True,
    )  # fmt: skip
    rec = wait_state(box, "early", "succeeded", "failed", "lost", "stopped", timeout=120)
    assert "warned, saving and leaving" in log_of(box, "early")
    assert rec["state"] == "failed", (rec, log_of(box, "early"))
    assert "time limit" in box.cli("show", "early", check=True).stdout
    proc = box.cli("wait", "early", "--timeout", "10")
    assert proc.returncode != 0 and "TIMEOUT" in proc.stdout, proc.stdout


def test_a_slow_teardown_after_the_warning_is_not_killed_by_its_repeat(box: Sandbox) -> None:  # noqa: F811
    box.write("warned.py", WARNED)
    box.cli(
        "start", "warned.py", "8", "--slurm", "--cpu", "--time", "1", "--signal-before", "50",
        "--name", "slow", check=True,
    )  # fmt: skip
    rec = wait_state(box, "slow", "succeeded", "failed", "lost", "stopped", timeout=120)
    log = log_of(box, "slow")
    assert "teardown done" in log, (rec, log)
    assert rec["runs"][-1]["signal"] is None, rec


def _unreachable(sb: Sandbox, conf: str) -> Path:
    """A copy of the cluster's slurm.conf whose controller port nobody listens on."""
    lines = Path(conf).read_text().splitlines()
    bad = sb.root / "unreachable.conf"
    bad.write_text(
        "\n".join("SlurmctldPort=1" if x.startswith("SlurmctldPort=") else x for x in lines) + "\n"
    )
    return bad


def test_a_stop_slurm_could_not_take_does_not_stop_the_job_later(
    box: Sandbox,  # noqa: F811
    slurm_conf: str,  # noqa: F811
) -> None:
    box.write("job.py", SLEEP_EXIT)
    # The job outlives the failed stop (squeue's 3 s, then scancel's 9 s for an unreachable
    # controller): a job that ends by itself while a stop is under way reads "stopped".
    box.cli("start", "job.py", "25", "0", "--slurm", "--cpu", "--name", "later", check=True)
    wait_state(box, "later", "running", timeout=90)
    bad = _unreachable(box, slurm_conf)
    proc = box.cli("stop", "later", env={"SLURM_CONF": str(bad), "HANDYJOBS_SLURM_CACHE_S": "0"})
    assert proc.returncode != 0
    assert show(box, "later")["runs"][-1]["stop_requested"] is False, proc.stderr
    rec = wait_state(box, "later", "succeeded", "failed", "stopped", "lost", timeout=90)
    assert rec["state"] == "succeeded", rec


def test_exec_runs_a_shell_script_itself_not_with_python(box: Sandbox) -> None:  # noqa: F811
    script = box.write("run.sh", '#!/bin/sh\necho "shell says $0 $1"\n')
    script.chmod(0o755)
    box.cli("start", "--exec", "./run.sh", "hi", "--slurm", "--cpu", "--name", "sh", check=True)
    rec = wait_state(box, "sh", "succeeded", "failed", "lost", timeout=90)
    assert rec["state"] == "succeeded", log_of(box, "sh")
    assert f"shell says {script} hi" in log_of(box, "sh")


def _renamed(sb: Sandbox, conf: str, cluster: str) -> Path:
    """A copy of the cluster's slurm.conf that names another cluster (same controller)."""
    lines = Path(conf).read_text().splitlines()
    other = sb.root / f"{cluster}.conf"
    named = (f"ClusterName={cluster}" if x.startswith("ClusterName=") else x for x in lines)
    other.write_text("\n".join(named) + "\n")
    return other


def test_a_job_of_another_cluster_is_neither_lost_nor_cancelled_from_here(
    box: Sandbox,  # noqa: F811
    slurm_conf: str,  # noqa: F811
) -> None:
    box.write("job.py", SLEEP_EXIT)
    box.cli("start", "job.py", "300", "0", "--slurm", "--cpu", "--name", "there", check=True)
    rec = wait_state(box, "there", "running", timeout=90)
    assert rec["runs"][-1]["handle"]["cluster"] == "handyjobs-local"
    other = {
        "SLURM_CONF": str(_renamed(box, slurm_conf, "elsewhere")),
        "HANDYJOBS_SLURM_CACHE_S": "0",
    }
    assert "running" in box.cli("list", check=True, env=other).stdout
    proc = box.cli("stop", "there", env=other)
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and "handyjobs-local" in proc.stderr
    assert show(box, "there", env=other)["state"] == "running"
    assert show(box, "there")["state"] == "running"
    box.cli("stop", "there", check=True)


RANK = """
import os
print("rank", os.environ["RANK"], "met at", os.environ["MASTER_ADDR"], flush=True)
"""


def test_the_ranks_meet_at_the_head_nodes_address(box: Sandbox) -> None:  # noqa: F811
    addr = slurm_out(box, "scontrol", "show", "node", "-o").split("NodeAddr=")[1].split()[0]
    box.write("rank.py", RANK)
    box.cli("start", "rank.py", "--slurm", "--cpu", "--nproc", "2", "--name", "meet", check=True)
    rec = wait_state(box, "meet", "succeeded", "failed", "lost", timeout=90)
    assert rec["state"] == "succeeded", log_of(box, "meet")
    assert f"c10d {addr}:" in box.cli("show", "meet", check=True).stdout
    assert "--rdzv-endpoint=" + addr in log_of(box, "meet")


def test_a_refused_submit_leaves_no_job_folder(box: Sandbox) -> None:  # noqa: F811
    box.write("job.py", SLEEP_EXIT)
    argv = ("job.py", "0", "0", "--slurm", "--partition", "nope", "--name", "refused")
    proc = box.cli("start", *argv)
    assert proc.returncode == 2 and "sbatch refused the job" in proc.stderr, proc.stderr
    assert not (box.home / "jobs" / "refused").exists()
    assert "refused" not in box.cli("list", "--all", check=True).stdout


def test_a_job_whose_node_cannot_write_its_folder_fails_saying_where_to_look(box: Sandbox) -> None:  # noqa: F811
    box.write("job.py", SLEEP_EXIT)
    # As on a node that does not share the state folder: Slurm cannot open the job's output
    # there, and the runner never starts. (The user's sbatch options come last and win.)
    box.cli(
        "start", "job.py", "0", "0", "--slurm", "--cpu", "--name", "unshared",
        "--slurm-arg=--output=/nonexistent/handyjobs/slurm-%j.out", check=True,
    )  # fmt: skip
    rec = wait_state(box, "unshared", "failed", "lost", "succeeded", timeout=90)
    assert rec["state"] == "failed", rec
    assert rec["reason"]["kind"] == "no_job_side" and "FAILED" in rec["reason"]["detail"], rec
    assert rec["exit_code"] is None and rec["runs"][-1]["started_at"] is None
    out = box.cli("show", "unshared", check=True).stdout
    assert "its runner never reported" in out and "every node shares" in out, out
    proc = box.cli("wait", "unshared", "--timeout", "10")
    assert proc.returncode == 1, proc.stdout
