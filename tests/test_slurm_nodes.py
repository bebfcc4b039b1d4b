"""On the local two-node Slurm (n1 and n2, names that resolve nowhere): a job on both nodes
meets by address, logs every rank with its node, counts what each node used, and a failure of
its second node ends it ``lost`` on both."""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import Sandbox, log_of, show, wait_state, wait_until
from test_slurm import FOREVER, box, nodes_back, slurm_conf, slurm_out  # noqa: F401  (fixtures shared with the Slurm tests)

pytestmark = pytest.mark.slurm

# Each rank burns a second and a half of CPU, then meets the other at a barrier.
BURN = """
import os, time
import torch.distributed as dist
dist.init_process_group("gloo")
print("rank", dist.get_rank(), "of", dist.get_world_size(), flush=True)
t = time.process_time()
while time.process_time() - t < 1.5:
    pass
dist.barrier()
dist.destroy_process_group()
"""

STARTS = """
import os
print("start", os.environ.get("SLURM_RESTART_COUNT", "0"), flush=True)
"""

def test_a_job_on_two_nodes_logs_each_rank_with_its_node_and_counts_both(box: Sandbox) -> None:  # noqa: F811
    box.write("burn.py", BURN)
    box.cli(
        "start", "burn.py", "--slurm", "--nodes", "2", "--cpu", "--nproc", "1", "--name", "two",
        check=True,
    )  # fmt: skip
    rec = wait_state(box, "two", "succeeded", "failed", "lost", timeout=120)
    log = log_of(box, "two")
    assert rec["state"] == "succeeded", log
    # The nodes met at the head's address: n1 resolves nowhere.
    assert "--rdzv-endpoint=127.0.0.1:" in log
    placed = dict(re.findall(r"\[handyjobs\] rank (\d) runs on node (n\d)", log))
    assert sorted(placed) == ["0", "1"] and sorted(placed.values()) == ["n1", "n2"], log
    assert "rank 0 of 2" in log and "[rank 1] rank 1 of 2" in log
    # Each rank's own log, by rank, from either node, names the node it ran on.
    for rank, node in placed.items():
        own = box.cli("logs", "two", "--rank", rank, check=True).stdout
        assert f"rank {rank} (node {node}, local rank 0) started" in own, own
        assert f"rank {rank} of 2" in own
    prefixed = box.cli("logs", "two", "--prefix", check=True).stdout
    assert "[rank 0] rank 0 of 2" in prefixed and "[rank 1] rank 1 of 2" in prefixed
    # What each node used, measured there: both ranks burned 1.5 s of CPU.
    cost = show(box, "two")["runs"][-1]["cost"]
    by_node = {n["node"]: n["cpu_time_s"] for n in cost["nodes"]}
    assert sorted(by_node) == ["n1", "n2"] and min(by_node.values()) >= 1.5, cost
    assert cost["cpu_time_s"] >= 3.0, cost
    out = box.cli("show", "two", check=True).stdout
    assert re.search(r"cpu time\s+\S+ on 2 nodes \(n1 \S+, n2 \S+\)", out), out
    # --like of a job on two nodes asks for two nodes again (held: it need not run).
    box.cli("start", "--like", "two", "--name", "again", "--hold", check=True)
    assert show(box, "again")["spec"]["slurm"]["nodes"] == 2
    box.cli("stop", "again", check=True)


def test_a_failure_of_the_second_node_ends_the_job_lost(
    box: Sandbox,  # noqa: F811
    nodes_back: None,  # noqa: F811
) -> None:
    box.write("forever.py", FOREVER)
    box.cli(
        "start", "forever.py", "--slurm", "--nodes", "2", "--cpu", "--nproc", "1", "--name", "nf2",
        "--slurm-arg=--no-requeue", check=True,
    )  # fmt: skip
    wait_until(lambda: "runs on node" in log_of(box, "nf2"), 90, 0.5, "both ranks to start")
    job_id = show(box, "nf2")["runs"][-1]["handle"]["job_id"]
    nodes = slurm_out(box, "squeue", "-h", "-j", job_id, "-o", "%N").strip()
    assert nodes == "n[1-2]", nodes
    slurm_out(box, "scontrol", "update", "nodename=n2", "state=down", "reason=handyjobs-test")
    rec = wait_state(box, "nf2", "lost", "failed", "succeeded", "stopped", timeout=90)
    assert rec["state"] == "lost", (rec, log_of(box, "nf2"))
    assert rec["exit_code"] is None, rec
    proc = box.cli("wait", "nf2", "--timeout", "10")
    assert proc.returncode not in (0, 124), proc.stdout
    assert "NODE_FAIL" in box.cli("show", "nf2", check=True).stdout

    def gone() -> bool:
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        return str(box.root / "forever.py") not in ps

    # The first node's rank ends with the job; the failed node's, when its slurmd hears.
    wait_until(gone, 60, 0.5, "the job's processes on both nodes to end")


def test_a_job_on_a_failed_node_comes_back_where_the_site_requeues(
    box: Sandbox,  # noqa: F811
    nodes_back: None,  # noqa: F811
) -> None:
    # The local cluster requeues batch jobs (JobRequeue=1, Slurm's default): handyjobs leaves
    # that to the site unless asked (--requeue, or --slurm-arg=--no-requeue).
    box.write("forever.py", STARTS + FOREVER)
    box.cli("start", "forever.py", "--slurm", "--cpu", "--name", "back", check=True)
    wait_until(lambda: "start 0" in log_of(box, "back"), 90, 0.5, "the job to start")
    job_id = show(box, "back")["runs"][-1]["handle"]["job_id"]
    node = slurm_out(box, "squeue", "-h", "-j", job_id, "-o", "%N").strip()
    slurm_out(box, "scontrol", "update", f"nodename={node}", "state=down", "reason=handyjobs-test")
    seen: set[str] = set()

    def again() -> bool:
        listed = box.cli("list", check=True).stdout
        seen.update(w for w in ("requeued", "succeeded", "lost", "failed") if w in listed)
        return "start 1" in log_of(box, "back")

    wait_until(again, 120, 0.5, "the requeued job to start again")
    rec = wait_state(box, "back", "running", timeout=30)
    assert seen <= {"requeued"}, seen  # never an end while Slurm brought it back
    assert rec["runs"][-1]["cluster"]["restarts"] == 1 and len(rec["runs"]) == 1, rec
    assert "requeued 1x" in box.cli("show", "back", check=True).stdout
    box.cli("stop", "back", check=True)
    assert show(box, "back")["state"] == "stopped"
