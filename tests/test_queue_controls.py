"""Queue controls end to end: hold and release (and ``start --hold``), edit, priority, ``logs -f``
of several jobs, and a queue that survives a restart of the machine. Real tmux, real processes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from conftest import SLEEPER, Sandbox, log_of, show, wait_state, wait_until

# A job that writes down that it ran, with its arguments and one variable of its environment.
NOTE = """
import json, os, sys
with open(os.environ["NOTES"], "a") as f:
    f.write(json.dumps({"job": os.environ["HANDYJOBS_JOB"], "args": sys.argv[1:],
                        "x": os.environ.get("X")}) + "\\n")
"""


def _notes(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _listed(box: Sandbox) -> dict[str, dict[str, object]]:
    return {d["name"]: d for d in json.loads(box.cli("list", "--json", check=True).stdout)}


def test_a_held_job_never_starts_until_released(sandbox: Sandbox) -> None:
    sandbox.write("note.py", NOTE)
    notes = sandbox.root / "notes.jsonl"
    env = {"NOTES": str(notes)}
    out = sandbox.cli("start", "note.py", "--name", "later", "--hold", env=env, check=True).stdout
    assert "queued later" in out and "held" in out
    # The queue goes on without it: a job started after it runs and ends.
    sandbox.cli("start", "note.py", "--name", "now", env=env, check=True)
    wait_state(sandbox, "now", "succeeded")
    assert [n["job"] for n in _notes(notes)] == ["now"]
    listed = sandbox.cli("list", check=True).stdout
    assert any(line.split()[:2] == ["later", "held"] for line in listed.splitlines())
    assert "later: held: it starts only after `handyjobs release`" in listed
    top = sandbox.cli("top", "--once", check=True).stdout.splitlines()
    assert "0 running, 0 queued, 1 held" in top[0]
    assert any(line.split()[:2] == ["later", "held"] for line in top)
    doc = _listed(sandbox)["later"]
    assert doc["state"] == "queued" and doc["wait"]["held"] is True  # type: ignore[index]
    assert show(sandbox, "later")["runs"][-1]["held"] is True
    assert "already held" in sandbox.cli("hold", "later").stderr
    released = sandbox.cli("release", "later", check=True).stdout
    assert released.startswith("released later")
    wait_state(sandbox, "later", "succeeded")
    assert [n["job"] for n in _notes(notes)] == ["now", "later"]
    done = sandbox.cli("release", "later")
    assert done.returncode == 1 and "has ended (succeeded)" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_hold_release_and_priority_reorder_a_full_queue(sandbox: Sandbox) -> None:
    sandbox.write("sleep.py", SLEEPER)
    sandbox.write("note.py", NOTE)
    notes = sandbox.root / "notes.jsonl"
    env = {"NOTES": str(notes)}
    sandbox.cli("config", "parallel", "1", check=True)
    sandbox.cli("start", "sleep.py", "--name", "first", "--", "go", check=True)
    wait_state(sandbox, "first", "running")
    for name in ("q1", "q2", "q3"):
        sandbox.cli("start", "note.py", "--name", name, env=env, check=True)
    assert sandbox.cli("hold", "q1", check=True).stdout.startswith("held q1")
    moved = sandbox.cli("priority", "q3", "5", check=True).stdout
    assert "q3: priority 5" in moved and "#1" in moved
    states = {n: d["state"] for n, d in _listed(sandbox).items()}
    assert states == {"first": "running", "q1": "queued", "q2": "queued", "q3": "queued"}
    table = sandbox.cli("list", check=True).stdout.splitlines()
    cells = {line.split()[0]: " ".join(line.split()[1:3]) for line in table[1:5]}
    assert cells["q3"].startswith("queued #1") and cells["q2"].startswith("queued #2")
    assert cells["q1"].startswith("held")
    # A negative priority is a value, not an option.
    assert "priority -2;" in sandbox.cli("priority", "q2", "-2", check=True).stdout
    assert "not a whole number" in sandbox.cli("priority", "q2", "high").stderr
    (sandbox.root / "go").touch()
    wait_state(sandbox, "q2", "succeeded")
    assert [n["job"] for n in _notes(notes)] == ["q3", "q2"]
    assert show(sandbox, "q1")["state"] == "queued"
    sandbox.cli("release", "q1", check=True)
    wait_state(sandbox, "q1", "succeeded")
    assert [n["job"] for n in _notes(notes)] == ["q3", "q2", "q1"]


def test_edit_changes_a_queued_job_and_is_refused_once_it_runs(sandbox: Sandbox) -> None:
    sandbox.write("note.py", NOTE)
    sandbox.write("sleep.py", SLEEPER)
    notes = sandbox.root / "notes.jsonl"
    env = {"NOTES": str(notes), "X": "from-start"}
    sandbox.cli("start", "note.py", "--name", "e", "--hold", "--", "--lr", "1", env=env, check=True)
    out = sandbox.cli(
        "edit",
        "e",
        "--env",
        "X=edited",
        "--priority",
        "3",
        "--",
        "--lr",
        "2",
        "--tag",
        "a b",
        check=True,
    ).stdout
    assert out.startswith("edited e: note.py --lr 2 --tag 'a b'")
    spec = show(sandbox, "e")["spec"]
    assert spec["args"] == ["--lr", "2", "--tag", "a b"] and spec["priority"] == 3
    assert list(spec["env"]) == ["X"]  # its value reaches the job (below); show masks it
    # Checked as start checks: one line, exit 2, nothing changed.
    bad = sandbox.cli("edit", "e", "--env", "1X=y")
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
    assert "no job of that name" in sandbox.cli("edit", "e", "--after", "nope").stderr
    assert "nothing to change" in sandbox.cli("edit", "e").stderr
    # A job waiting for e: e may not be made to wait for it (both would wait forever).
    sandbox.cli("start", "note.py", "--name", "after-e", "--after", "e", env=env, check=True)
    cycle = sandbox.cli("edit", "e", "--after", "after-e")
    assert cycle.returncode == 2 and "would wait forever" in cycle.stderr
    assert show(sandbox, "e")["spec"]["after"] == []
    assert show(sandbox, "e")["spec"]["args"] == ["--lr", "2", "--tag", "a b"]
    sandbox.cli("release", "e", check=True)
    wait_state(sandbox, "e", "succeeded")
    wait_state(sandbox, "after-e", "succeeded")
    assert _notes(notes)[0] == {"job": "e", "args": ["--lr", "2", "--tag", "a b"], "x": "edited"}
    sandbox.cli("start", "sleep.py", "--name", "busy", check=True)
    wait_state(sandbox, "busy", "running")
    refused = sandbox.cli("edit", "busy", "--", "--lr", "9")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "handyjobs: error: job busy is running; edit changes a queued job only before it "
        "starts (`handyjobs restart busy` runs it again, with changes)"
    )
    assert show(sandbox, "busy")["spec"]["args"] == []


def test_logs_follow_several_jobs_tags_each_line_with_its_job(sandbox: Sandbox) -> None:
    sandbox.write(
        "count.py",
        "import os, sys, time\n"
        "while not os.path.exists('go'): time.sleep(0.05)\n"
        "for i in range(3): print('line', i, flush=True)\n"
        "sys.exit(int(sys.argv[1]))\n",
    )
    sandbox.cli("start", "count.py", "--name", "a", "--group", "pair", "--", "0", check=True)
    sandbox.cli("start", "count.py", "--name", "bb", "--group", "pair", "--", "3", check=True)
    (sandbox.root / "go").touch()
    followed = sandbox.cli("logs", "-f", "--group", "pair", timeout=60)
    assert followed.returncode == 3, followed.stderr  # the failure's code, as `wait` gives it
    lines = followed.stdout.splitlines()
    for i in range(3):
        assert f"a  | line {i}" in lines and f"bb | line {i}" in lines
    assert all(line.startswith(("a  | ", "bb | ")) for line in lines)
    named = sandbox.cli("logs", "-f", "a", "bb", check=None)
    assert named.returncode == 3 and named.stdout.count(" | line ") == 6
    tail = sandbox.cli("logs", "a", "bb", "-n", "1", check=True).stdout.splitlines()
    assert len(tail) == 2 and tail[0].startswith("a  | ") and tail[1].startswith("bb | ")
    assert "--raw reads one job's log" in sandbox.cli("logs", "a", "bb", "--raw").stderr


def test_queued_jobs_start_again_after_a_restart_of_the_machine(sandbox: Sandbox) -> None:
    sandbox.write("sleep.py", SLEEPER)
    sandbox.write("note.py", NOTE)
    notes = sandbox.root / "notes.jsonl"
    sandbox.cli("config", "parallel", "1", check=True)
    sandbox.cli("start", "sleep.py", "--name", "ran", check=True)
    wait_state(sandbox, "ran", "running")
    env = {"NOTES": str(notes)}
    sandbox.cli("start", "note.py", "--name", "waits", "--", "x", env=env, check=True)
    sandbox.cli("start", "note.py", "--name", "kept", "--hold", env=env, check=True)
    # The power goes: every runner dies at once without a word, then the tmux server.
    runners = [
        show(sandbox, name)["runs"][-1]["runner"]["pid"] for name in ("ran", "waits", "kept")
    ]
    for pid in runners:
        os.kill(pid, signal.SIGKILL)
    sandbox.tmux("kill-server")
    booted = {"HANDYJOBS_BOOT_ID": "the-next-boot"}
    listed = sandbox.cli("list", env=booted, check=True).stdout
    assert "ran" in listed
    ran = show(sandbox, "ran", env=booted)
    assert ran["state"] == "lost" and ran["reason"]["kind"] == "reboot"
    waits = wait_state(sandbox, "waits", "succeeded", env=booted)
    assert waits["runs"][-1]["boot_id"] == "the-next-boot"
    assert [n["job"] for n in _notes(notes)] == ["waits"]
    # A held job is started again held: it still waits for its release.
    kept = show(sandbox, "kept", env=booted)
    assert kept["state"] == "queued" and kept["runs"][-1]["held"] is True
    assert kept["runs"][-1]["boot_id"] == "the-next-boot"
    sandbox.cli("release", "kept", env=booted, check=True)
    wait_state(sandbox, "kept", "succeeded", env=booted)
    assert "queued: held" in log_of(sandbox, "kept")
    wait_until(lambda: len(_notes(notes)) == 2, what="the held job's note")
