"""On a real local Slurm: ``hold``/``release`` (and ``start --hold``) are Slurm's hold and
release, ``pause``/``resume`` its suspend and resume, ``kill --signal`` its ``scancel
--signal``; ``list`` keeps reading them so; ``stop``
ends a held or paused job; a refusal of Slurm's is one line and changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Sandbox, show, wait_state, wait_until
from test_controls import COUNTER, LISTENER, count, stays
from test_slurm import FOREVER, box, slurm_conf, slurm_out  # noqa: F401  (fixtures shared with the Slurm tests)

pytestmark = pytest.mark.slurm

# A job that writes down that it ran.
NOTE = """
import os, sys
with open(os.environ["NOTES"], "a") as f:
    f.write(os.environ["HANDYJOBS_JOB"] + "\\n")
"""

#: Ask Slurm afresh on every command: what ``list`` shows is then Slurm's word of the moment.
FRESH = {"HANDYJOBS_SLURM_CACHE_S": "0"}


def _job_id(sb: Sandbox, name: str) -> str:
    return str(show(sb, name)["runs"][-1]["handle"]["job_id"])


def _squeue(sb: Sandbox, job_id: str) -> tuple[str, str]:
    """Slurm's state and reason of a job ("", "" once it is gone)."""
    out = slurm_out(sb, "squeue", "-h", "-j", job_id, "--states=all", "-O", "State:|,Reason:|")
    state, _, reason = out.strip().partition("|")
    return state.strip(), reason.strip().rstrip("|")


def _stat_state(pid: int) -> str | None:
    """The state letter of a process from ``/proc/PID/stat`` (``T``: stopped), None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[0]


def _listed(sb: Sandbox) -> dict[str, str]:
    """Each job's STATE cell in ``list``, with Slurm asked afresh."""
    lines = sb.cli("list", check=True, env=FRESH).stdout.splitlines()
    return {line.split()[0]: line.split()[1] for line in lines[1:] if len(line.split()) > 1}


def _notes(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_a_held_slurm_job_never_starts_until_released(box: Sandbox) -> None:  # noqa: F811
    notes = box.root / "notes"
    env = {"NOTES": str(notes)}
    box.write("note.py", NOTE)
    box.write("forever.py", FOREVER)
    out = box.cli("start", "note.py", "--slurm", "--cpu", "--hold", "--name", "later", env=env)
    assert out.returncode == 0, out.stderr
    later = _job_id(box, "later")
    assert _squeue(box, later) == ("PENDING", "JobHeldUser")  # sbatch --hold
    # A job that takes both nodes whole, so that the next one waits in Slurm's queue.
    box.cli(
        "start", "forever.py", "--slurm", "--cpu", "--nodes", "2", "--slurm-arg=--exclusive",
        "--name", "blocker", check=True,
    )  # fmt: skip
    wait_state(box, "blocker", "running", timeout=90)
    box.cli("start", "note.py", "--slurm", "--cpu", "--name", "next", env=env, check=True)
    nxt = _job_id(box, "next")
    wait_until(lambda: _squeue(box, nxt)[0] == "PENDING", 30, 0.5, "next to wait in Slurm")
    held = box.cli("hold", "next")
    assert held.returncode == 0 and held.stdout.startswith("held next"), held.stderr
    assert _squeue(box, nxt)[1].startswith("JobHeld")  # scontrol hold
    again = box.cli("hold", "next")
    assert again.returncode == 1 and "already held" in again.stderr
    box.cli("stop", "blocker", check=True)
    # The node is free: Slurm looks at its queue every 2 s, and starts neither held job.
    assert stays(lambda: (_squeue(box, later)[0], _squeue(box, nxt)[0], _notes(notes)), 8) == (
        "PENDING",
        "PENDING",
        [],
    )
    assert _listed(box)["later"] == "held" and _listed(box)["next"] == "held"
    doc = json.loads(box.cli("show", "next", "--json", check=True, env=FRESH).stdout)
    assert doc["state"] == "queued" and doc["runs"][-1]["held"] is True
    assert "held: it starts only after `handyjobs release`" in box.cli("list", env=FRESH).stdout
    for name in ("next", "later"):
        released = box.cli("release", name)
        assert released.returncode == 0 and released.stdout.startswith(f"released {name}")
        assert wait_state(box, name, "succeeded", "failed", "lost", timeout=90)["state"] == (
            "succeeded"
        )
    assert sorted(_notes(notes)) == ["later", "next"]
    gone = box.cli("release", "later")
    assert gone.returncode == 1 and len(gone.stderr.strip().splitlines()) == 1


def test_stop_of_a_held_slurm_job_cancels_it(box: Sandbox) -> None:  # noqa: F811
    box.write("forever.py", FOREVER)
    box.cli("start", "forever.py", "--slurm", "--cpu", "--hold", "--name", "h", check=True)
    job_id = _job_id(box, "h")
    assert _listed(box)["h"] == "held"
    box.cli("stop", "h", check=True)
    assert show(box, "h")["state"] == "stopped"
    assert _squeue(box, job_id)[0] in ("", "CANCELLED")


def _pids(root: Path) -> list[int]:
    return [int(p) for p in (root / "pids").read_text().split()]


def test_a_paused_slurm_job_is_suspended_and_continues_after_resume(box: Sandbox) -> None:  # noqa: F811
    root = box.root
    box.write("counter.py", COUNTER)
    box.cli("start", "counter.py", "--slurm", "--cpu", "--name", "c", check=True)
    wait_until(
        lambda: count(root, "main") > 2 and count(root, "child") > 2, 90, 0.2, "the job to count"
    )
    job_id, pids = _job_id(box, "c"), _pids(root)
    out = box.cli("pause", "c")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"paused c (Slurm job {job_id} suspended)"), out.stdout
    wait_until(lambda: [_stat_state(p) for p in pids] == ["T", "T"], 30, 0.1, "state T")
    assert _squeue(box, job_id)[0] == "SUSPENDED"
    # Asking Slurm again (its state reads SUSPENDED) keeps it paused, in list and show.
    assert _listed(box)["c"] == "paused"
    assert show(box, "c", env=FRESH)["state"] == "paused"
    main, child = stays(lambda: (count(root, "main"), count(root, "child")), 2.0)
    again = box.cli("pause", "c")
    assert again.returncode == 1 and "job c is paused; nothing to pause" in again.stderr

    out = box.cli("resume", "c")
    assert out.returncode == 0 and out.stdout.startswith(f"resumed c (Slurm job {job_id} resumed)")
    wait_until(
        lambda: count(root, "main") > main and count(root, "child") > child, 30, 0.1, "counts"
    )
    assert "T" not in [_stat_state(p) for p in pids]
    assert _listed(box)["c"] == "running"
    assert show(box, "c", env=FRESH)["state"] == "running"
    not_paused = box.cli("resume", "c")
    assert not_paused.returncode == 1 and "is not paused (it runs)" in not_paused.stderr

    # A paused job is stopped as any other: cancelled, nothing left.
    box.cli("pause", "c", check=True)
    wait_until(lambda: _stat_state(pids[0]) == "T", 30, 0.1, "paused again")
    box.cli("stop", "c", check=True)
    assert wait_state(box, "c", "stopped", "lost", "failed", timeout=60)["state"] == "stopped"
    wait_until(lambda: all(_stat_state(p) in (None, "Z") for p in pids), 60, 0.2, "pids gone")


def test_a_pause_slurm_refuses_is_one_line_and_changes_nothing(box: Sandbox) -> None:  # noqa: F811
    box.write("forever.py", FOREVER)
    box.cli("start", "forever.py", "--slurm", "--cpu", "--name", "f", check=True)
    wait_until(lambda: show(box, "f")["started_at"], 90, 0.5, "the job to start")
    job_id = _job_id(box, "f")
    # Slurm ends the job behind handyjobs' back, while the answer handyjobs keeps from
    # squeue still says it runs: Slurm then refuses the suspend, as a job it cannot suspend.
    kept = {"HANDYJOBS_SLURM_CACHE_S": "600"}
    assert _listed(box)["f"] == "running"
    (box.home / "slurm-squeue.json").unlink(missing_ok=True)
    box.cli("list", check=True, env=kept)  # keeps squeue's answer of now for 600 s
    slurm_out(box, "scancel", "--full", "--signal=KILL", job_id)
    wait_until(lambda: _squeue(box, job_id)[0] != "RUNNING", 30, 0.2, "Slurm to end it")
    before = show(box, "f", env=kept)
    assert before["state"] == "running"
    refused = box.cli("pause", "f", env=kept)
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert refused.stdout == "" and len(refused.stderr.strip().splitlines()) == 1
    assert f"Slurm refused to suspend job {job_id}" in refused.stderr
    after = show(box, "f", env=kept)
    assert after["state"] == "running" and after["runs"] == before["runs"]


def test_kill_has_slurm_signal_every_process_of_the_job(box: Sandbox) -> None:  # noqa: F811
    root = box.root
    box.write("listener.py", LISTENER)
    box.cli("start", "listener.py", "--slurm", "--cpu", "--name", "ks", "--", "--child",
            check=True)  # fmt: skip
    wait_until(
        lambda: (root / "main-ready").exists() and (root / "child-ready").exists(),
        90,
        what="both processes to listen",
    )
    job_id = _job_id(box, "ks")
    out = box.cli("kill", "ks", "--signal", "USR1", check=True).stdout
    said = f"Slurm sent it to every process of job {job_id}'s steps"
    assert out.strip() == f"sent SIGUSR1 to ks ({said})"
    wait_until(
        lambda: (root / "main-got").exists() and (root / "child-got").exists(),
        30,
        what="both handlers",
    )
    assert (root / "main-got").read_text().split()[0] == "SIGUSR1"
    main = box.cli("kill", "ks", "--signal", "USR1", "--main")
    assert main.returncode == 1 and main.stderr.count("\n") == 1, main.stderr
    assert "leave out --main" in main.stderr
    assert show(box, "ks")["state"] == "running"  # a signal changes no state
    box.cli("stop", "ks", check=True)
    wait_state(box, "ks", "stopped", timeout=90)

