"""One node's side of a job on several nodes: the node wrapper measures what ran on its node,
ends as its command ended, and the nodes' reports add up to the run's cost; the state folder's
file system says whether a cluster's nodes can write there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from handyjobs.backends.slurm import shared
from handyjobs.core.records import Cost, GpuUse, NodeCost
from handyjobs.jobside.sampler import over_nodes

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\n"


def _node(tmp_path: Path, node: str, *command: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HANDYJOBS_LOG": str(tmp_path / "output.log"),
        "HANDYJOBS_RUN_ID": "abc123",
        "SLURMD_NODENAME": node,
        "SLURM_RESTART_COUNT": "0",
    }
    argv = [sys.executable, "-m", "handyjobs.backends.slurm.node", "n1", "--", *command]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def test_the_node_wrapper_reports_the_cpu_its_node_used_and_ends_as_its_command(
    tmp_path: Path,
) -> None:
    # A child of the command burns CPU too: wait4 counts what the command waited for.
    script = tmp_path / "burn.py"
    script.write_text(BURN)
    inner = (
        f"import subprocess, sys; subprocess.run([sys.executable, {str(script)!r}]); sys.exit(3)"
    )
    done = _node(tmp_path, "n2", sys.executable, "-c", inner)
    assert done.returncode == 3, done.stderr
    report = json.loads((tmp_path / "node-cost-abc123-n2-0.json").read_text())
    assert report["node"] == "n2" and report["cpu_time_s"] >= 0.6, report
    assert report["max_rss_bytes"] > 0


def test_the_node_wrapper_dies_of_the_signal_its_command_died_of(tmp_path: Path) -> None:
    done = _node(tmp_path, "n1", sys.executable, "-c", "import os; os.kill(os.getpid(), 9)")
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr)
    assert (tmp_path / "node-cost-abc123-n1-0.json").is_file()


def test_a_missing_command_is_one_line(tmp_path: Path) -> None:
    done = _node(tmp_path, "n1", str(tmp_path / "no-such-program"))
    assert done.returncode == 1
    assert done.stderr.strip().startswith("handyjobs: cannot run"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_nodes_reports_add_up_and_a_requeued_nodes_starts_too() -> None:
    measured = Cost(cpu_time_s=0.1, peak_rss_bytes=10, max_rss_bytes=10, samples=5)
    reports = [
        NodeCost("n2", 4.0, 300, 200, (GpuUse(0, 1000, 50.0, 3),)),
        NodeCost("n1", 5.0, 400, 250, (GpuUse(0, 2000, 70.0, 3),)),
        NodeCost("n1", 1.5, 100, 90),  # the same node's start after a requeue
    ]
    cost = over_nodes(measured, reports)
    assert [n.node for n in cost.nodes] == ["n1", "n2"]
    assert cost.nodes[0].cpu_time_s == 6.5 and cost.nodes[0].max_rss_bytes == 250
    assert cost.cpu_time_s == 10.5 and cost.peak_rss_bytes == 700 and cost.max_rss_bytes == 250
    assert cost.gpus == () and len(cost.nodes[0].gpus) == 1 and cost.samples == 5
    assert over_nodes(measured, []) == measured  # no node reported: what the runner saw


MOUNTS = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
30 27 0:40 / /tmp rw - tmpfs tmpfs rw
31 27 0:41 / /home rw - nfs4 server:/home rw
32 31 0:42 / /home/me/scratch\\040space rw - lustre 10.0.0.1@o2ib:/fs rw
"""


def test_the_state_folders_file_system_is_that_of_its_longest_mount_point() -> None:
    assert shared.mount_kind(Path("/tmp/handyjobs"), MOUNTS) == "tmpfs"
    assert shared.mount_kind(Path("/home/me/.local/state/handyjobs"), MOUNTS) == "nfs4"
    assert shared.mount_kind(Path("/home/me/scratch space/hj"), MOUNTS) == "lustre"
    assert shared.mount_kind(Path("/tmpfoo"), MOUNTS) == "ext4"  # not under /tmp


def test_start_warns_only_of_a_local_folder_that_other_machines_would_write() -> None:
    me = os.uname().nodename
    note = shared.unshared_note(Path("/tmp/hj"), "tmpfs", [me, "gpu01", "gpu02"])
    assert note is not None and "/tmp/hj is on tmpfs" in note and "gpu01 and 1 more" in note
    assert "HANDYJOBS_HOME" in note
    assert shared.unshared_note(Path("/tmp/hj"), "tmpfs", [me]) is None  # the nodes are here
    assert shared.unshared_note(Path("/home/me"), "nfs4", ["gpu01"]) is None  # shared
    assert shared.unshared_note(Path("/x"), None, ["gpu01"]) is None  # cannot tell: no word
