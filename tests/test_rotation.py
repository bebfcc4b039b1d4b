"""Log rotation end to end: a real job with a small cap, and ``logs`` across the ``.1`` file.

The rotation itself (the cap, where it cuts, following across it) is tested on files in
``tests/fast/test_rotation_files.py``.
"""

from __future__ import annotations

from pathlib import Path

from conftest import Sandbox, show, wait_state

from handyjobs.jobside.rotation import MAX_ENV, previous


def test_a_job_with_a_small_cap_rotates_and_logs_shows_the_end(sandbox: Sandbox) -> None:
    sandbox.write(
        "chatty.py", "for i in range(4000):\n    print(f'line {i:05d}', 'w' * 40, flush=True)\n"
    )
    sandbox.cli("start", "chatty.py", "--name", "ch", env={MAX_ENV: "0.05"}, check=True)
    wait_state(sandbox, "ch", "succeeded")
    log = Path(show(sandbox, "ch")["log_path"])
    assert Path(previous(str(log))).exists()
    assert log.stat().st_size < 0.05 * (1 << 20) + 4096
    tail = sandbox.cli("logs", "ch", "-n", "3", check=True).stdout.splitlines()
    assert tail[0] == f"line 03998 {'w' * 40}" and tail[1] == f"line 03999 {'w' * 40}"
    assert tail[2].startswith("[handyjobs] run 1 of ch ended")
    every = sandbox.cli("logs", "ch", check=True).stdout.splitlines()
    numbered = [line for line in every if line.startswith("line ")]
    first = int(numbered[0].split()[1])
    assert numbered == [f"line {i:05d} {'w' * 40}" for i in range(first, 4000)]
