"""Measure per-rank output: merged lines under bare torchrun and under handyjobs, and the cost.

Two ranks print ``--lines`` lines each with ``print()`` (under torchrun's ``python -u`` a
print is two writes: the text, then the newline), on CPU with gloo. Two cases, alternated
run by run:

* ``bare``: ``python -m torch.distributed.run --standalone --nproc-per-node=2 chatty.py`` on
  a pseudo-terminal, its output copied to a file by :func:`handyjobs.jobside.tee.run_on_pty` (what
  the runner did before each rank had its wrapper);
* ``handyjobs``: ``handyjobs start chatty.py --cpu --nproc 2`` (each rank in
  :mod:`handyjobs.jobside.rank`), in a temporary ``HANDYJOBS_HOME`` on a throwaway tmux socket.

Reported: runs with a damaged line, damaged lines (a line holding pieces of two, or not one
whole line of the script), lines missing, and the median seconds from start to end of the
job (torchrun's own start-up included). The script reports; it always exits 0.

Usage::

    python scripts/bench_ranks.py                    # 10 runs of 200 lines per rank
    python scripts/bench_ranks.py --runs 5 --lines 20000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from handyjobs.core.records import parse_time
from handyjobs.jobside.tee import run_on_pty

# Both ranks wait for each other (a file each) so that their prints overlap in time.
CHATTY = """
import os, sys, time
rank = os.environ["RANK"]
here = os.path.join(sys.argv[1], "ready-" + rank)
open(here, "w").close()
while len(os.listdir(sys.argv[1])) < 2:
    time.sleep(0.0005)
for i in range({lines}):
    print(f"R{{rank}} L{{i:06d}} " + "abcdefghij" * 5)
"""
LINE = re.compile(r"(?:\[rank (\d)\] )?R(\d) L(\d{6}) (?:abcdefghij){5}")


@dataclass
class Case:
    """One case's results over its runs."""

    name: str
    damaged_runs: int = 0
    damaged: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def count(text: str, lines: int) -> tuple[int, int]:
    """Damaged lines (pieces of two, or not whole), and lines missing, in a job's output."""
    damaged = 0
    seen = set()
    for line in text.splitlines():
        pieces = len(re.findall(r"R\d L\d{6}", line))
        if pieces == 0:
            continue  # torchrun's and handyjobs' own lines
        match = LINE.fullmatch(line)
        if pieces > 1 or match is None or (match.group(1) not in (None, match.group(2))):
            damaged += 1
            continue
        seen.add((match.group(2), match.group(3)))
    return damaged, 2 * lines - len(seen)


def _barrier(work: Path) -> str:
    """A fresh, empty folder for the ranks of one run to meet in."""
    return tempfile.mkdtemp(dir=work, prefix="barrier-")


def bare(script: Path, work: Path) -> tuple[str, float]:
    """torchrun on a pty, teed to a file, as the runner ran it before rank wrappers."""
    log = work / "bare.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    argv += ["--nproc-per-node=2", str(script), _barrier(work)]
    start = time.monotonic()
    try:
        run_on_pty(argv, dict(os.environ), str(work), fd, echo_fd=None, input_fd=None)
    finally:
        os.close(fd)
    return log.read_text(errors="replace"), time.monotonic() - start


def wrapped(script: Path, work: Path, env: dict[str, str], n: int) -> tuple[str, float]:
    """The same script through ``handyjobs start``; seconds from the run's start to its end."""
    name = f"b{n}"
    cli = [sys.executable, "-m", "handyjobs"]
    # the job's python is this one (with torch), whatever `python` is on PATH
    start = ["start", str(script), "--cpu", "--nproc", "2", "--name", name]
    subprocess.run(
        [*cli, *start, "--python", sys.executable, "--", _barrier(work)],
        env=env,
        cwd=work,
        check=True,
        capture_output=True,
    )
    subprocess.run([*cli, "wait", name], env=env, capture_output=True)
    rec = json.loads(
        subprocess.run([*cli, "show", name, "--json"], env=env, capture_output=True).stdout
    )
    took = (parse_time(rec["ended_at"]) - parse_time(rec["started_at"])).total_seconds()
    return Path(rec["log_path"]).read_text(errors="replace"), took


def main() -> None:
    """Run both cases and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--lines", type=int, default=200, help="lines per rank")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hj-bench-ranks-") as tmp:
        work = Path(tmp)
        script = work / "chatty.py"
        script.write_text(CHATTY.format(lines=args.lines))
        socket = f"hj-bench-{os.getpid()}"
        env = {
            **os.environ,
            "HANDYJOBS_HOME": str(work / "state"),
            "HANDYJOBS_TMUX_SOCKET": socket,
            "OMP_NUM_THREADS": "1",
        }
        env.pop("PYTHONUNBUFFERED", None)
        os.environ.pop("PYTHONUNBUFFERED", None)
        cases = [Case("bare torchrun"), Case("handyjobs")]
        try:
            for n in range(args.runs):
                for case in cases:
                    if case is cases[0]:
                        text, took = bare(script, work)
                    else:
                        text, took = wrapped(script, work, env, n)
                    damaged, missing = count(text, args.lines)
                    case.damaged_runs += damaged > 0
                    case.damaged.append(damaged)
                    case.missing.append(missing)
                    case.seconds.append(took)
        finally:
            subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)
    total = 2 * args.lines
    print(f"2 ranks x {args.lines} lines, print() under python -u, {args.runs} runs each\n")
    print(
        f"{'case':<14}  {'runs damaged':>12}  {'damaged lines (max)':>19}  "
        f"{'missing (max)':>13}  {'median s':>8}"
    )
    for case in cases:
        print(
            f"{case.name:<14}  {case.damaged_runs:>6} of {args.runs:<3}  "
            f"{sum(case.damaged):>8} ({max(case.damaged)}/{total})  "
            f"{sum(case.missing):>6} ({max(case.missing)})  "
            f"{statistics.median(case.seconds):>8.2f}"
        )


if __name__ == "__main__":
    main()
