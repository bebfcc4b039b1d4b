"""What waiting in the queue costs: CPU of all queued runners, with 10, 40 and 80 queued jobs.

Usage: ``python scripts/bench_queue.py [--sizes 10,40,80] [--seconds 10]``

Each size gets a fresh state folder and tmux socket: one job that sleeps holds the queue (the
others start ``--after`` it), N jobs wait, and the CPU time of every runner (user + system,
from /proc) is measured over a window. The figure is a percentage of one core; flat in N means
the cost does not grow with the queue (each queued runner sleeps on its wake file; one
schedules). Prints one line per size and the ratio of the largest to the smallest.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from handyjobs import procfs

SLEEPER = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]):\n    time.sleep(0.2)\n"


def _cli(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "-m", "handyjobs", *args], env=env, check=True,
                   capture_output=True, text=True)  # fmt: skip


def _runners(marker: str, skip: bytes = b"\0holder\0") -> list[int]:
    """The queued jobs' runners of this benchmark (their argv names its state folder); the
    holder's runner, which runs a job, is not one of them."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"handyjobs.jobside.runner" in argv and marker.encode() in argv and skip not in argv:
            found.append(int(entry))
    return found


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        used = procfs.cpu_and_rss(pid)
        if used is not None:
            total += used[0]
    return total


def measure(size: int, seconds: float) -> float:
    """Percent of one core that ``size`` queued runners use while they wait."""
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        home, sock = Path(tmp) / "state", f"hj-bench-{uuid.uuid4().hex[:8]}"
        env = {**os.environ, "HANDYJOBS_HOME": str(home), "HANDYJOBS_TMUX_SOCKET": sock}
        script, release = Path(tmp) / "sleep.py", Path(tmp) / "release"
        script.write_text(SLEEPER)
        try:
            _cli(env, "start", str(script), "--cpu", "--name", "holder", "--", str(release))
            for i in range(size):
                _cli(env, "start", str(script), "--cpu", "--name", f"q{i}", "--after",
                     "holder", "--", str(release))  # fmt: skip
            time.sleep(3)  # let every runner settle into its wait
            pids = _runners(str(home))
            before, t0 = _cpu(pids), time.monotonic()
            time.sleep(seconds)
            used, took = _cpu(pids) - before, time.monotonic() - t0
            return 100.0 * used / took
        finally:
            release.touch()
            deadline = time.monotonic() + 60
            while _runners(str(home), b"\0never\0") and time.monotonic() < deadline:
                time.sleep(0.5)  # let the released jobs finish before the folder goes
            subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)


def main() -> None:
    """Measure each size and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,40,80")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    figures = {n: measure(n, args.seconds) for n in sizes}
    for n, pct in figures.items():
        print(f"{n:4d} queued: {pct:6.2f}% of one core ({pct / n:.3f}% per queued job)")
    small, large = figures[min(sizes)], figures[max(sizes)]
    print(f"ratio {max(sizes)}/{min(sizes)} queued: {large / small if small else float('inf'):.2f}")


if __name__ == "__main__":
    main()
