"""Benchmark one job's history look-up and removal with a large history, and print a table.

Measured with 10,000 and 100,000 finished jobs (``--sizes``), each as the median of ``--runs``
runs, interleaved round by round with ``python -c pass`` (the baseline of the same run, so
drift and noise hit every case alike):

* ``show`` of the oldest finished job and of the newest (a look-up from the end of the
  history: the oldest is the worst case);
* ``rm`` of an old job (another one each round), which must neither read nor rewrite the
  whole history.

Each row gives the median in ms, its ratio to ``python -c pass`` and the largest resident
memory of the command. ``--compare DIR`` times the same cases again with ``PYTHONPATH=DIR``
(an older checkout) on its own copy of the same registry, in the same rounds, for a
before/after table from one run on one machine.

Registries are written directly in the current layout (``registry.json`` plus
``history.jsonl``) in a temporary ``HANDYJOBS_HOME``, and one untimed ``rm`` per checkout
warms it up (and indexes the history, as any ``rm`` of a user's does); the user's own
registry is never touched. The script reports; it always exits 0.

Usage::

    python scripts/bench_history.py                      # 10,000 and 100,000 jobs, 5 runs
    python scripts/bench_history.py --sizes 10000 --runs 9
    python scripts/bench_history.py --compare /tmp/old-checkout
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cli import bench_env, make_record  # the sibling script, found above

from handyjobs.core import paths
from handyjobs.core.history import checked, migrate
from handyjobs.core.records import SCHEMA_VERSION, JobRecord

#: Distinct realistic records generated; the rest are copies under other names (the cost
#: of a look-up depends on the lines' sizes and count, not on their variety).
TEMPLATES = 500
#: The CLI of the checkout on ``PYTHONPATH`` (``python -m`` honours it; a console script may not).
CLI = [sys.executable, "-m", "handyjobs"]


@dataclass
class Case:
    """One timed command: its label, how to run it once, and what it measured."""

    label: str
    run: Callable[[int], tuple[float, float]]
    seconds: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)


def name_of(i: int) -> str:
    """The name of the i-th finished job (1 is the oldest)."""
    return f"job-{i}"


def build_home(root: Path, count: int) -> None:
    """Write ``count`` finished jobs, oldest first, as the current release keeps them."""
    paths.ensure_private_dir(root)
    rng = random.Random(7)
    start = datetime.now(timezone.utc) - timedelta(days=400)
    lines = []
    for i in range(TEMPLATES):
        doc = make_record(i, rng, start, root)
        record = checked(JobRecord.from_dict(migrate(doc, 1)))
        lines.append(json.dumps(record.to_dict(), ensure_ascii=False))
    with open(paths.history_path(root), "w", encoding="utf-8") as out:
        out.write(json.dumps({"schema_version": SCHEMA_VERSION}) + "\n")
        for i in range(1, count + 1):
            line = lines[i % TEMPLATES]
            doc = json.loads(line)
            old = doc["name"]
            # The name is the line's first field; the session and log path carry it too.
            out.write(
                line.replace(f'"{old}"', f'"{name_of(i)}"').replace(f"/{old}/", f"/{name_of(i)}/")
                + "\n"
            )
    head = {"schema_version": SCHEMA_VERSION, "next_id": count + 1, "finished": count}
    paths.registry_path(root).write_text(json.dumps(head)[:-1] + ', "jobs": [\n]}\n')
    for path in (paths.history_path(root), paths.registry_path(root)):
        path.chmod(0o600)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Seconds from spawning ``argv`` to its exit, and its largest resident memory in MB."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        env=env,
        # Not in a checkout: ``python -m`` puts the working folder first on the path, before
        # ``PYTHONPATH``, so run from the temporary folder.
        cwd=tempfile.gettempdir(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {err.decode(errors='replace').strip()[-300:]}")
    return elapsed, usage.ru_maxrss / 1024


def cases_for(size: int, homes: dict[str, Path], pycache: Path, compare: str | None) -> list[Case]:
    """The commands timed for one history size, for this checkout and the compared one."""
    cases = [
        Case("python -c pass", lambda _: timed([sys.executable, "-c", "pass"], os.environ.copy()))
    ]
    for variant, home in homes.items():
        env = bench_env(home, f"bench-history-{os.getpid()}", pycache)
        if variant == "before" and compare:
            env["PYTHONPATH"] = compare

        def show(which: int, env: dict[str, str] = env) -> Callable[[int], tuple[float, float]]:
            return lambda _: timed([*CLI, "show", name_of(which)], env)

        def remove(round_no: int, env: dict[str, str] = env) -> tuple[float, float]:
            # An old job, another one each round.
            return timed([*CLI, "rm", name_of(2 + round_no)], env)

        cases += [
            Case(f"{variant}: show oldest", show(1)),
            Case(f"{variant}: show newest", show(size)),
            Case(f"{variant}: rm old job", remove),
        ]
    return cases


def bench_size(size: int, runs: int, work: Path, compare: str | None) -> None:
    """Build a history of ``size`` jobs, time every case round by round, print the rows."""
    template = work / f"home-{size}"
    t0 = time.perf_counter()
    build_home(template, size)
    mb = paths.history_path(template).stat().st_size / 1e6
    print(
        f"\n{size:,} finished jobs: history {mb:.0f} MB (built in {time.perf_counter() - t0:.0f} s)"
    )
    homes = {"after": template}
    if compare:
        homes["before"] = work / f"home-{size}-before"
        shutil.copytree(template, homes["before"])
    cases = cases_for(size, homes, work / "pycache", compare)
    for variant, home in homes.items():
        # Warm-up, untimed: bytecode compiled, the file in the page cache, and one rm (as a
        # user's history has seen), which indexes a history written without its index.
        env = bench_env(home, f"bench-history-{os.getpid()}", work / "pycache")
        if variant == "before" and compare:
            env["PYTHONPATH"] = compare
        timed([*CLI, "rm", name_of(size // 2)], env)
    for round_no in range(runs):
        for case in cases:
            seconds, rss = case.run(round_no)
            case.seconds.append(seconds)
            case.rss_mb.append(rss)
    base = statistics.median(cases[0].seconds)
    print(f"{'case':<28} {'median ms':>10} {'x python':>9} {'max RSS MB':>11}")
    for case in cases:
        ms = statistics.median(case.seconds) * 1000
        ratio = statistics.median(case.seconds) / base
        print(f"{case.label:<28} {ms:>10.1f} {ratio:>9.1f} {max(case.rss_mb):>11.0f}")
    shutil.rmtree(template, ignore_errors=True)
    if compare:
        shutil.rmtree(homes["before"], ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run each size, print the tables; always 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--compare", metavar="DIR", help="an older checkout, timed alongside")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        for size in args.sizes:
            try:
                bench_size(size, args.runs, Path(tmp), args.compare)
            except (RuntimeError, OSError) as exc:
                print(f"{size:,} jobs: not measured ({exc})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
