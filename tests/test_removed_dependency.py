"""A removed dependency fails its dependants; a new job of its name is another job."""

from __future__ import annotations

from conftest import SLEEPER, Sandbox, show, wait_state


def test_rm_of_a_dependency_then_a_new_job_of_its_name_waits_forever_for_nothing(
    sandbox: Sandbox,
) -> None:
    sandbox.write("sleep.py", SLEEPER)
    release = sandbox.root / "release"
    sandbox.cli("start", "sleep.py", "--cpu", "--name", "c", "--", str(release), check=True)
    sandbox.cli("start", "sleep.py", "--cpu", "--name", "b", "--after", "c", check=True)
    sandbox.cli("start", "sleep.py", "--cpu", "--name", "a", "--after", "b", check=True)
    wait_state(sandbox, "a", "queued")
    removed = sandbox.cli("rm", "b", "--force")
    assert removed.returncode == 0, removed.stderr
    # a waited for that b: a job named b started now is not it. Started before the queue's
    # next pass fails a, it queues after a and fails with it; started after, it is refused.
    new_b = sandbox.cli("start", "sleep.py", "--cpu", "--name", "b", "--after", "a")
    a = wait_state(sandbox, "a", "failed", timeout=60)
    assert a["runs"][-1]["reason"]["job"] == "b" and a["runs"][-1]["started_at"] is None
    if new_b.returncode == 0:
        b = wait_state(sandbox, "b", "failed", timeout=60)
        assert b["runs"][-1]["started_at"] is None
    else:
        assert new_b.returncode == 1 and "job a failed" in new_b.stderr
        assert len(new_b.stderr.strip().splitlines()) == 1
    release.touch()
    wait_state(sandbox, "c", "succeeded")
    assert show(sandbox, "a")["state"] == "failed"
