"""``logs -f`` prints every line exactly once while the job is still writing (no replay)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading

from conftest import Sandbox, wait_state, wait_until

# Writes numbered lines as fast as it can, in bursts, until told to stop by a file; then the
# last number, so the reader knows how many there were.
WRITER = """
import os, sys
stop = sys.argv[1]
n = 0
while not os.path.exists(stop) or n < 2000:
    for _ in range(200):
        sys.stdout.write(f"line {n}\\n")
        n += 1
    sys.stdout.flush()
print(f"total {n}", flush=True)
"""


def test_logs_follow_while_the_job_writes_prints_every_line_once(sandbox: Sandbox) -> None:
    script = sandbox.write("writer.py", WRITER)
    stop = sandbox.root / "stop"
    sandbox.cli("start", str(script), "--name", "w", "--cpu", "--", str(stop), check=True)
    log = sandbox.home / "jobs" / "w" / "output.log"

    def size() -> int:
        return log.stat().st_size if log.exists() else 0

    # Catch it mid-stream: the log grows while `logs -f` takes its size and reads it.
    wait_until(lambda: size() > 2_000_000, 60, what="the job to write")
    follower = subprocess.Popen(
        [sys.executable, "-m", "handyjobs", "logs", "w", "-f", "--plain"],
        env=sandbox.env,
        cwd=sandbox.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    # Once it prints, it took the log's size and is reading: the job writes on meanwhile.
    assert follower.stdout is not None
    chunks: list[bytes] = []
    fd = follower.stdout.fileno()
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(fd, 65536), b"")))
    reader.start()
    wait_until(lambda: chunks, 60, what="logs -f to print")
    grown = size() + 500_000
    wait_until(lambda: size() > grown, 30, what="the job to write more")
    stop.touch()
    follower.wait(timeout=120)
    reader.join(timeout=60)
    err = follower.stderr.read() if follower.stderr else b""
    out = b"".join(chunks)
    assert follower.returncode == 0, err.decode()
    wait_state(sandbox, "w", "succeeded")
    text = out.decode()
    numbers = [int(m) for m in re.findall(r"^line (\d+)\r?$", text, re.M)]
    total = int(re.findall(r"^total (\d+)", text, re.M)[0])
    dupes = len(numbers) - len(set(numbers))
    assert dupes == 0, f"{dupes} lines printed twice"
    assert sorted(numbers) == list(range(total)), "lines missing from logs -f"
