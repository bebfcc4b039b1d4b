"""Benchmark the handyjobs CLI against bare Python start-up and print a table.

Measured, each as the median of ``--runs`` runs and as a ratio to ``python -c pass`` timed in the
same run (cases are interleaved round by round, so drift and noise hit them alike):

* ``handyjobs list`` with 0, 1,000 and 10,000 records, its output read from a pipe (as a script
  reads it) and from a pseudo-terminal (as a person sees it: the coloured table);
* ``list`` with 1,000 records of which a few jobs really run, so reconciling them is included;
* ``list --json`` and ``list --all`` with 10,000 records (informational);
* ``handyjobs start`` of a one-line script until the line it prints is in the job's log;
* the delay from a line printed by a job (it carries ``time.time()``) to ``logs -f`` showing it;
* the write path with 100 and with 10,000 finished jobs, interleaved, and their ratio (target
  <= 1.3: writers must not slow down with history): ``start`` until the command returns,
  ``stop`` of a running job, and one scheduling pass over queued jobs (in-process, on fake GPUs);
* the start-up of each command (``start``, ``stop --help``, ``list``, ``show``, ``logs``,
  ``wait``, ``gpus``, ``--help``) as a ratio to ``python -c pass`` timed in the same rounds
  (target: 3x each, 5x for ``start``, which creates a tmux session). ``--commands`` times only
  these; ``--compare DIR`` times them again with ``PYTHONPATH=DIR`` (an older checkout) in the
  same rounds, for a before/after table from one run on one machine.

Registries are written in the first release's layout (one ``registry.json`` with every record)
and migrated by an untimed warm-up command, so the same script also measures an older checkout
(``PYTHONPATH=<old checkout> python scripts/bench_cli.py``) for a before/after comparison.

Everything runs with an installed copy, as a user's ``pip install`` leaves it: a virtual
environment made for the run, holding this checkout's package (copied, not linked or editable)
and its ``handyjobs`` console script, and reaching this interpreter's dependencies through one
``.pth`` line (so none of their own ``.pth`` start-up hooks runs). A development install's
hooks (an editable install's finder imports ``pathlib``, ``re``, ``importlib.util``) made
``python -c pass`` itself 2x slower, and every ratio look better than a user sees.
``--here`` runs with this interpreter as it is instead. It runs in a
temporary ``HANDYJOBS_HOME`` and on a throwaway tmux socket whose server is killed at the end;
the user's own registry and tmux are never touched. The script reports; it always exits 0.

Usage::

    python scripts/bench_cli.py            # 15 runs per case
    python scripts/bench_cli.py --runs 25
    python scripts/bench_cli.py --quick    # fewer runs, shorter logs -f job
    python scripts/bench_cli.py --commands --compare /tmp/old-checkout
    python scripts/bench_cli.py --here     # this interpreter and its install, as they are
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pty
import random
import re
import secrets
import select
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from handyjobs.core import paths

#: Terminal size of the pseudo-terminal ``list`` prints to (rows, columns).
PTY_SIZE = (40, 160)
#: How often the log file is polled while waiting for a job's first line.
POLL_S = 0.002
#: Jobs that really run while ``list`` is timed in the "with running jobs" case.
RUNNING_JOBS = 5

#: The targets from the issue: ratio to ``python -c pass`` for ``list``, absolute ms otherwise.
TARGET_LIST_1K = 3.5
TARGET_LIST_10K = 7.0
#: Writers with 10,000 finished jobs against 100.
TARGET_WRITE_RATIO = 1.3
TARGET_START_MS = 500.0
TARGET_LOGS_MS = 200.0
#: Each command's start-up against ``python -c pass``; ``start`` also creates a tmux session.
TARGET_COMMAND = 3.0
TARGET_START_COMMAND = 5.0

ONE_LINE_SCRIPT = 'print("bench-first-line")\n'
SLEEPER_SCRIPT = textwrap.dedent(
    """\
    import time
    print("bench-sleeping", flush=True)
    time.sleep(3600)
    """
)
TICKER_SCRIPT = textwrap.dedent(
    """\
    import sys, time
    count = int(sys.argv[1])
    print("bench-ready", flush=True)
    time.sleep(1.5)  # lets `logs -f` start and reach its steady state first
    for i in range(count):
        print(f"bench-tick {i} {time.time():.6f}", flush=True)
        time.sleep(0.3)
    """
)
TICK_RE = re.compile(rb"bench-tick (\d+) (\d+\.\d+)")


# ---- results ---------------------------------------------------------------------------------


@dataclass
class Case:
    """One timed case: its label, how to run it once, and what it measured."""

    label: str
    run_once: Callable[[], float]
    target: str = "info"
    check: Callable[[float, float], bool] | None = None
    samples: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class Row:
    """One line of the final table."""

    label: str
    median_s: float | None
    target: str = "info"
    verdict: str = "info"
    note: str = ""


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


# ---- running commands ------------------------------------------------------------------------


class CommandFailed(RuntimeError):
    """A benchmarked command exited non-zero (its stderr is the message)."""


def bench_env(home: Path, socket: str, pycache: Path) -> dict[str, str]:
    """The caller's environment with handyjobs pointed at a temp home and a throwaway socket.

    Bytecode is cached under ``pycache`` (``PYTHONPYCACHEPREFIX``), even where the caller set
    ``PYTHONDONTWRITEBYTECODE``: a user's installed package has its ``.pyc`` files, and
    compiling every module on every run would bill ``list`` for work users never see.
    Nothing is written next to the sources.
    """
    env = dict(os.environ)
    for key in ("TMUX", "TMUX_PANE", "COLUMNS", "LINES", "PYTHONDONTWRITEBYTECODE"):
        env.pop(key, None)
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    env["HANDYJOBS_HOME"] = str(home)
    env["HANDYJOBS_TMUX_SOCKET"] = socket
    return env


def time_pipe(argv: Sequence[str], env: dict[str, str]) -> float:
    """Seconds from spawning ``argv`` to its exit, stdout and stderr read from pipes."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise CommandFailed(proc.stderr.decode(errors="replace").strip()[-300:])
    return elapsed


def time_pty(argv: Sequence[str], env: dict[str, str]) -> float:
    """Seconds from spawning ``argv`` to its exit, stdout and stderr on a pseudo-terminal."""
    env = dict(env)
    if env.get("TERM", "dumb") == "dumb":
        env["TERM"] = "xterm-256color"
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *PTY_SIZE, 0, 0))
    chunks: list[bytes] = []
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, close_fds=True
        )
    finally:
        os.close(slave)
    try:
        while True:  # drain, or a large table would fill the pty and block the child
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every copy of the slave side is closed
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait()
    finally:
        os.close(master)
    elapsed = time.perf_counter() - t0
    if code != 0:
        raise CommandFailed(b"".join(chunks).decode(errors="replace").strip()[-300:])
    return elapsed


def run_quiet(argv: Sequence[str], env: dict[str, str], timeout: float = 60.0) -> int:
    """Run an untimed helper command (set-up, clean-up); return its exit code."""
    try:
        return subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout
        ).returncode
    except subprocess.TimeoutExpired:
        return -1


def wait_for(predicate: Callable[[], bool], timeout_s: float, poll_s: float = POLL_S) -> bool:
    """Poll ``predicate`` until it holds or the deadline passes; return whether it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()


def log_has(path: Path, marker: bytes) -> bool:
    """True when the file at ``path`` exists and contains ``marker``."""
    try:
        return marker in path.read_bytes()
    except FileNotFoundError:
        return False


def printed(path: Path, marker: bytes) -> Callable[[], bool]:
    """A predicate: the log at ``path`` contains ``marker``."""
    return lambda: log_has(path, marker)


# ---- synthetic registries --------------------------------------------------------------------


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_record(i: int, rng: random.Random, created: datetime, root: Path) -> dict[str, object]:
    """A realistic finished job, as the first release wrote it: a training script with
    arguments, GPUs, git info, a log.

    About one job in ten was restarted (two or three runs); end states are mostly
    ``succeeded``, then ``failed``, ``stopped`` and a few ``lost``.
    """
    project = rng.choice(["resnet-cifar", "llm-finetune", "detr", "whisper-small", "vit-b16"])
    stem = rng.choice(["train", "main", "finetune", "eval", "pretrain"])
    name = f"{stem}-{i}" if rng.random() < 0.8 else f"exp{i}-{rng.choice(['lr', 'wd', 'bs'])}"
    ngpus = rng.choice([1, 1, 2, 2, 4, 8])
    gpus = sorted(rng.sample(range(8), ngpus))
    base = f"/home/alice/projects/{project}"
    args = ["--lr", rng.choice(["1e-3", "3e-4", "1e-4"]), "--epochs"]
    args += [str(rng.choice([10, 90, 300])), "--batch-size", str(rng.choice([64, 128, 256]))]
    pinned = rng.random() < 0.7
    spec = {
        "script": f"{base}/{stem}.py",
        "args": [*args, "--synch"],
        "module": False,
        "cwd": base,
        "python": f"{base}/.venv/bin/python",
        "gpus": gpus if pinned else None,
        "ngpus": None if pinned else ngpus,
        "cpu": False,
        "nproc": None,
        "env": {"WANDB_PROJECT": project} if rng.random() < 0.3 else {},
        "wait": False,
        "force": False,
    }
    runs: list[dict[str, object]] = []
    moment = created
    for number in range(1, rng.choice([1] * 9 + [2, 3]) + 1):
        started = moment + timedelta(seconds=rng.uniform(0.2, 120))
        ended = started + timedelta(seconds=rng.uniform(5, 36 * 3600))
        state = rng.choices(["succeeded", "failed", "stopped", "lost"], weights=[70, 20, 7, 3])[0]
        runner_pid = rng.randint(1000, 4_000_000)
        runs.append(
            {
                "run": number,
                "run_id": f"{rng.getrandbits(48):012x}",
                "state": state,
                "created_at": _stamp(moment),
                "started_at": _stamp(started),
                "ended_at": _stamp(ended),
                "exit_code": {"succeeded": 0, "failed": 1}.get(state),
                "signal": 15 if state == "stopped" else None,
                "gpus": gpus,
                "nproc": ngpus,
                "rendezvous": f"127.0.0.1:{rng.randint(20000, 60000)}" if ngpus > 1 else None,
                "pids": {"runner": runner_pid, "main": runner_pid + 7},
                "stop_requested": state == "stopped",
                "waiting_for": None,
            }
        )
        moment = ended + timedelta(seconds=rng.uniform(1, 600))
    last = runs[-1]
    return {
        "name": name,
        "state": last["state"],
        "command": " ".join([f"{stem}.py", *args, "--synch"]),
        "gpus": gpus,
        "nproc": ngpus,
        "waiting_for": None,
        "created_at": _stamp(created),
        "started_at": last["started_at"],
        "ended_at": last["ended_at"],
        "exit_code": last["exit_code"],
        "signal": last["signal"],
        "session": name,
        "log_path": str(paths.log_path(name, root)),
        "git": {"commit": f"{rng.getrandbits(160):040x}", "dirty": rng.random() < 0.4},
        "spec": spec,
        "runs": runs,
    }


def build_registry(root: Path, count: int, seed: int = 7) -> Path:
    """Write ``count`` finished records, oldest first, in the first release's layout."""
    paths.ensure_private_dir(root)
    rng = random.Random(seed)
    moment = datetime.now(timezone.utc) - timedelta(days=400)
    step = timedelta(days=395) / max(count, 1)
    records = [make_record(i, rng, moment + step * i, root) for i in range(1, count + 1)]
    head = json.dumps({"schema_version": 1, "next_id": count + 1})[:-1] + ', "jobs": ['
    body = ",\n".join(json.dumps(r) for r in records)
    path = root / "registry.json"
    path.write_text(f"{head}\n{body}\n]}}\n")
    path.chmod(0o600)
    return path


# ---- the benchmark ---------------------------------------------------------------------------


class Bench:
    """Owns the temp folder, the tmux socket and the jobs it starts; cleans them all up."""

    def __init__(self, runs: int, quick: bool) -> None:
        """Pick the interpreter, the console script, a temp folder and a socket name."""
        self.runs = runs
        self.quick = quick
        self.python = sys.executable
        # Not resolved: a virtual environment's python is a link that must stay inside it.
        script = Path(sys.executable).parent / "handyjobs"
        self.cli = [str(script)] if script.exists() else [self.python, "-m", "handyjobs"]
        self.cli_kind = "console script" if script.exists() else "python -m handyjobs"
        self.tmp = Path(tempfile.mkdtemp(prefix="handyjobs-bench-"))
        self.socket = f"handyjobs-bench-{os.getpid()}-{secrets.token_hex(3)}"
        self.running_home = self.tmp / "home-1k-running"
        self.running_names: list[str] = []
        self.rows: list[Row] = []

    def env(self, home: Path) -> dict[str, str]:
        """The environment every handyjobs command of this benchmark runs with."""
        return bench_env(home, self.socket, self.tmp / "pycache")

    def say(self, text: str) -> None:
        """Progress on stderr, so the table on stdout stays clean."""
        print(f"  .. {text}", file=sys.stderr, flush=True)

    # ---- set-up ----

    def write_scripts(self) -> None:
        """The job scripts: one line, a sleeper, a ticker."""
        (self.tmp / "one.py").write_text(ONE_LINE_SCRIPT)
        (self.tmp / "sleeper.py").write_text(SLEEPER_SCRIPT)
        (self.tmp / "ticker.py").write_text(TICKER_SCRIPT)

    def prepare_homes(self) -> dict[str, Path]:
        """Registries of 0, 1,000 and 10,000 finished records, and 1,000 plus running jobs."""
        homes = {"0": self.tmp / "home-0", "1k": self.tmp / "home-1k", "10k": self.tmp / "home-10k"}
        paths.ensure_private_dir(homes["0"])
        for key, count in (("1k", 1_000), ("10k", 10_000)):
            t0 = time.perf_counter()
            path = build_registry(homes[key], count)
            size = path.stat().st_size / 1e6
            self.say(f"{count} records written ({size:.1f} MB) in {time.perf_counter() - t0:.1f}s")
            self.warm_up(homes[key])
        build_registry(self.running_home, 1_000)
        self.warm_up(self.running_home)
        env = self.env(self.running_home)
        for i in range(RUNNING_JOBS):
            name = f"bench-running-{i}"
            code = run_quiet(
                [*self.cli, "start", str(self.tmp / "sleeper.py"), "--name", name], env
            )
            if code == 0:
                self.running_names.append(name)
        for name in self.running_names:
            log = paths.log_path(name, self.running_home)
            if not wait_for(printed(log, b"bench-sleeping"), 30.0, 0.05):
                self.say(f"job {name} did not print its first line within 30 s")
        self.say(f"{len(self.running_names)} jobs running next to 1,000 records")
        homes["1k-running"] = self.running_home
        return homes

    def warm_up(self, home: Path) -> None:
        """One start, wait and rm: a release with a newer layout migrates the registry here."""
        env = self.env(home)
        name = f"bench-warm-{secrets.token_hex(2)}"
        run_quiet([*self.cli, "start", str(self.tmp / "one.py"), "--name", name], env)
        run_quiet([*self.cli, "wait", name, "--timeout", "20"], env)
        run_quiet([*self.cli, "rm", name, "--force", "--logs"], env)

    # ---- timed phases ----

    def list_cases(self, homes: dict[str, Path]) -> list[Case]:
        """The start-up cases, all timed round-robin."""
        py, cli = self.python, self.cli
        module = [py, "-m", "handyjobs"]

        def pipe(argv: list[str], home: Path) -> Callable[[], float]:
            env = self.env(home)
            return lambda: time_pipe(argv, env)

        def tty(argv: list[str], home: Path) -> Callable[[], float]:
            env = self.env(home)
            return lambda: time_pty(argv, env)

        def within(limit: float) -> Callable[[float, float], bool]:
            return lambda median, base: median <= limit * base

        h0, h1k, h10k, hrun = homes["0"], homes["1k"], homes["10k"], homes["1k-running"]
        lst = [*cli, "list"]
        return [
            Case("python -c pass (baseline)", pipe([py, "-c", "pass"], h0)),
            Case("python -c 'import handyjobs.cli'", pipe([py, "-c", "import handyjobs.cli"], h0)),
            Case("list, 0 records, pipe (console script)", pipe(lst, h0)),
            Case("list, 0 records, pipe (python -m)", pipe([*module, "list"], h0)),
            Case("list, 0 records, tty", tty(lst, h0)),
            Case("list, 1,000 records, pipe", pipe(lst, h1k), "<= 3.5x", within(TARGET_LIST_1K)),
            Case("list, 1,000 records, tty", tty(lst, h1k), "<= 3.5x", within(TARGET_LIST_1K)),
            Case(
                f"list, 1,000 + {len(self.running_names)} running, pipe",
                pipe(lst, hrun),
                "<= 3.5x",
                within(TARGET_LIST_1K),
            ),
            Case(
                f"list, 1,000 + {len(self.running_names)} running, tty",
                tty(lst, hrun),
                "<= 3.5x",
                within(TARGET_LIST_1K),
            ),
            Case("list, 10,000 records, pipe", pipe(lst, h10k), "<= 7x", within(TARGET_LIST_10K)),
            Case("list, 10,000 records, tty", tty(lst, h10k), "<= 7x", within(TARGET_LIST_10K)),
            Case("list --json, 10,000 records", pipe([*lst, "--json"], h10k)),
            Case("list --all, 10,000 records, pipe", pipe([*lst, "--all"], h10k)),
            Case("list --all --json, 10,000 records", pipe([*lst, "--all", "--json"], h10k)),
        ]

    def time_round_robin(self, cases: list[Case]) -> None:
        """One untimed warm-up round, then ``runs`` rounds over every case in turn."""
        for number in range(self.runs + 1):
            for case in cases:
                try:
                    elapsed = case.run_once()
                except (CommandFailed, OSError) as exc:
                    case.errors.append(str(exc))
                    continue
                if number > 0:
                    case.samples.append(elapsed)
            if number % 5 == 0:
                self.say(f"start-up round {number}/{self.runs}")

    def time_start(self, home: Path) -> tuple[list[float], list[float], list[str]]:
        """``start one.py`` until its line is in the log; also until the command returns."""
        env = self.env(home)
        script = str(self.tmp / "one.py")
        to_line: list[float] = []
        to_return: list[float] = []
        errors: list[str] = []
        for number in range(self.runs + 1):  # run 0 warms caches and is not counted
            name = f"bench-first-{number}-{secrets.token_hex(2)}"
            log = paths.log_path(name, home)
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [*self.cli, "start", script, "--name", name],
                env=env,
                cwd=self.tmp,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            returned: float | None = None
            seen: float | None = None
            deadline = t0 + 20.0
            while time.perf_counter() < deadline:
                if returned is None and proc.poll() is not None:
                    returned = time.perf_counter() - t0
                if log_has(log, b"bench-first-line"):
                    seen = time.perf_counter() - t0
                    break
                time.sleep(POLL_S)
            _, err = proc.communicate(timeout=60)
            if returned is None:
                returned = time.perf_counter() - t0
            if proc.returncode != 0:
                errors.append(err.decode(errors="replace").strip()[-300:])
            elif seen is None:
                errors.append(f"{name}: its line was not in the log after 20 s")
            elif number > 0:
                to_line.append(seen)
                to_return.append(returned)
            # Clean-up, untimed: let the job end, then drop its record and folder.
            run_quiet([*self.cli, "wait", name, "--timeout", "10"], env)
            run_quiet([*self.cli, "rm", name, "--force", "--logs"], env)
        return to_line, to_return, errors

    def time_follow(self, home: Path, lines: int) -> tuple[list[float], list[str]]:
        """Delays from a job printing a timestamped line to ``logs -f`` showing it."""
        env = self.env(home)
        name = f"bench-follow-{secrets.token_hex(3)}"
        script = str(self.tmp / "ticker.py")
        errors: list[str] = []
        delays: list[float] = []
        code = run_quiet([*self.cli, "start", script, "--name", name, "--", str(lines)], env)
        if code != 0:
            return [], [f"start of {name} failed with exit code {code}"]
        follower = subprocess.Popen(
            [*self.cli, "logs", name, "-f"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert follower.stdout is not None
        deadline = time.monotonic() + 30.0 + lines * 0.3
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([follower.stdout], [], [], 1.0)
                if not ready:
                    continue
                line = follower.stdout.readline()
                arrived = time.time()
                if not line:
                    break  # the job ended and logs -f returned
                match = TICK_RE.search(line)
                if match:
                    delays.append(arrived - float(match.group(2)))
        finally:
            if follower.poll() is None:
                follower.kill()
            follower.wait()
            follower.stdout.close()
        if len(delays) < lines:
            errors.append(f"logs -f showed {len(delays)} of {lines} lines")
        run_quiet([*self.cli, "wait", name, "--timeout", "10"], env)
        run_quiet([*self.cli, "rm", name, "--force", "--logs"], env)
        return delays, errors

    def time_start_stop(self, homes: dict[str, Path]) -> dict[str, dict[str, list[float]]]:
        """``start`` (until it returns) and ``stop`` in each home, interleaved round by round."""
        script = str(self.tmp / "sleeper.py")
        out: dict[str, dict[str, list[float]]] = {k: {"start": [], "stop": []} for k in homes}
        for number in range(self.runs + 1):
            for key, home in homes.items():
                env = self.env(home)
                name = f"bench-w-{number}"
                try:
                    started = time_pipe([*self.cli, "start", script, "--name", name], env)
                    log = paths.log_path(name, home)
                    wait_for(printed(log, b"bench-sleeping"), 30.0, 0.01)
                    stopped = time_pipe([*self.cli, "stop", name, "--timeout", "5"], env)
                except CommandFailed as exc:
                    self.say(f"write path, {key}: {exc}")
                    continue
                finally:
                    run_quiet([*self.cli, "rm", name, "--force", "--logs"], env)
                if number > 0:
                    out[key]["start"].append(started)
                    out[key]["stop"].append(stopped)
        return out

    def time_schedule(self, homes: dict[str, Path]) -> dict[str, list[float]] | None:
        """One scheduling pass (in this process) over 3 queued jobs waiting for 2 held GPUs."""
        try:
            from handyjobs.core import records, registry, scheduler
        except ImportError:
            return None  # a release without the scheduling pass
        if not hasattr(scheduler, "schedule_pass") or not hasattr(records, "ProcId"):
            return None  # an older release: its queue polled per job, there is no pass to time
        fake = self.tmp / "fake-gpus.json"
        gpu = {"name": "NVIDIA A100-SXM4-80GB", "memory_used_mib": 4, "memory_total_mib": 81920}
        fake.write_text(json.dumps({"gpus": [{"index": i, **gpu} for i in range(2)]}))
        me = records.ProcId(os.getpid(), int(Path("/proc/self/stat").read_text().split()[21]))
        for home in homes.values():
            with registry.locked(home) as reg:
                for i in range(5):
                    state = records.JobState.RUNNING if i < 2 else records.JobState.QUEUED
                    spec = records.JobSpec(script="/x/train.py", gpus=(i % 2,), wait=True)
                    run = records.Run(
                        1, f"sched{i}", state, records.utcnow(), gpus=(i,) if i < 2 else ()
                    )
                    run.runner = me  # looks alive: the pass has nothing to reconcile
                    reg.put(records.JobRecord(f"sched-{i}", spec, "/l", run.created_at, [run]))
        env = {**os.environ, "HANDYJOBS_FAKE_GPUS": str(fake)}
        out: dict[str, list[float]] = {k: [] for k in homes}
        for number in range(self.runs * 4 + 1):
            for key, home in homes.items():
                t0 = time.perf_counter()
                scheduler.schedule_pass(home, env)
                if number > 0:
                    out[key].append(time.perf_counter() - t0)
        return out

    def write_path_rows(self) -> None:
        """Rows for the write path: each size, and the ratio of 10,000 to 100."""
        homes = {"100": self.tmp / "home-w100", "10k": self.tmp / "home-w10k"}
        build_registry(homes["100"], 100, seed=11)
        build_registry(homes["10k"], 10_000, seed=11)
        for home in homes.values():
            self.warm_up(home)
        timed = self.time_start_stop(homes)
        sched = self.time_schedule(homes)
        series = {verb: (timed["100"][verb], timed["10k"][verb]) for verb in ("start", "stop")}
        if sched is not None:
            series["scheduling pass"] = (sched["100"], sched["10k"])
        for verb, (small, big) in series.items():
            a, b = _median(small), _median(big)
            self.rows.append(Row(f"{verb}, 100 finished jobs", a))
            self.rows.append(Row(f"{verb}, 10,000 finished jobs", b))
            ok = a is not None and b is not None and b <= TARGET_WRITE_RATIO * a
            ratio = f"{b / a:.2f}" if a and b else "-"
            verdict = "pass" if ok else "FAIL"
            label = f"{verb}: 10,000 / 100 = {ratio}"
            self.rows.append(Row(label, None, f"<= {TARGET_WRITE_RATIO}", verdict))

    # ---- each command's start-up ----

    def command_home(self) -> Path:
        """A home with one finished job (``bench-done``) for show, logs and wait."""
        home = self.tmp / "home-commands"
        paths.ensure_private_dir(home)
        env = self.env(home)
        run_quiet([*self.cli, "start", str(self.tmp / "one.py"), "--name", "bench-done"], env)
        run_quiet([*self.cli, "wait", "bench-done", "--timeout", "20"], env)
        return home

    def command_cases(self, home: Path, src: str | None) -> list[Case]:
        """One case per command; with ``src``, the same commands of that checkout."""
        env = self.env(home)
        tag = ""
        if src is not None:
            env["PYTHONPATH"] = src
            tag = " (before)"
        script = str(self.tmp / "one.py")
        count = [0]

        def start_once() -> float:
            count[0] += 1
            name = f"bench-c{count[0]}-{'b' if src else 'a'}"
            try:
                return time_pipe([*self.cli, "start", script, "--name", name], env)
            finally:  # untimed: let it end, then forget it
                run_quiet([*self.cli, "wait", name, "--timeout", "20"], env)
                run_quiet([*self.cli, "rm", name, "--force", "--logs"], env)

        def within(limit: float) -> Callable[[float, float], bool]:
            return lambda median, base: median <= limit * base

        def timed(argv: list[str]) -> Callable[[], float]:
            return lambda: time_pipe([*self.cli, *argv], env)

        plain = {
            "stop --help": ["stop", "--help"],
            "list": ["list"],
            "show": ["show", "bench-done"],
            "logs": ["logs", "bench-done"],
            "wait": ["wait", "bench-done"],
            "gpus": ["gpus"],
            "--help": ["--help"],
        }
        limit = f"<= {TARGET_START_COMMAND:g}x"
        cases = [Case(f"start{tag}", start_once, limit, within(TARGET_START_COMMAND))]
        limit = f"<= {TARGET_COMMAND:g}x"
        for label, argv in plain.items():
            cases.append(Case(f"{label}{tag}", timed(argv), limit, within(TARGET_COMMAND)))
        return cases

    def run_commands(self, compare: str | None) -> None:
        """Time every command's start-up (and the older checkout's) in the same rounds."""
        self.write_scripts()
        home = self.command_home()
        env = self.env(home)
        base_case = Case(
            "python -c pass (baseline)", lambda: time_pipe([self.python, "-c", "pass"], env)
        )
        cases = [base_case, *self.command_cases(home, None)]
        if compare is not None:
            cases += self.command_cases(home, compare)
        self.time_round_robin(cases)
        base = _median(base_case.samples)
        for case in cases:
            median = _median(case.samples)
            verdict = case.target
            if case.check is not None:
                ok = median is not None and base is not None and case.check(median, base)
                verdict = "pass" if ok else "FAIL"
            note = f"{len(case.errors)} errors: {case.errors[0]}" if case.errors else ""
            self.rows.append(Row(case.label, median, case.target, verdict, note))
        self.print_table(base, 0, 0)

    # ---- clean-up ----

    def cleanup(self) -> None:
        """Stop the running jobs, kill the throwaway tmux server, remove the temp folder."""
        if self.running_names:
            env = self.env(self.running_home)
            run_quiet([*self.cli, "stop", *self.running_names, "--timeout", "2"], env, 60.0)
        tmux = shutil.which("tmux")
        if tmux:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(
                    [tmux, "-L", self.socket, "kill-server"], capture_output=True, timeout=10
                )
        # tmux can leave its socket file behind; it is ours alone, so remove it. tmux puts it
        # under $TMUX_TMPDIR, else /tmp (it ignores TMPDIR).
        tmux_dir = Path(os.environ.get("TMUX_TMPDIR") or "/tmp")
        with contextlib.suppress(OSError):
            (tmux_dir / f"tmux-{os.getuid()}" / self.socket).unlink(missing_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- the whole run ----

    def run(self) -> None:
        """Set up, time every phase, print the table."""
        self.write_scripts()
        homes = self.prepare_homes()
        unchanged = {
            k: paths.registry_path(h).stat().st_mtime_ns
            for k, h in homes.items()
            if paths.registry_path(h).exists()
        }

        cases = self.list_cases(homes) + self.command_cases(self.command_home(), None)
        self.time_round_robin(cases)
        base = _median(cases[0].samples)

        for key, home in homes.items():
            path = paths.registry_path(home)
            if (
                key in unchanged
                and key != "1k-running"
                and path.stat().st_mtime_ns != unchanged[key]
            ):
                self.say(f"warning: `list` rewrote the registry of case {key}")

        self.say("start until first line")
        start_home = self.tmp / "home-start"
        paths.ensure_private_dir(start_home)
        to_line, to_return, start_errors = self.time_start(start_home)

        lines = 8 if self.quick else 15
        self.say("logs -f delay, empty registry")
        delays, follow_errors = self.time_follow(start_home, lines)
        self.say("logs -f delay, 10,000 records")
        follow_home = self.tmp / "home-follow-10k"
        shutil.copytree(homes["10k"], follow_home)
        delays_10k, follow_errors_10k = self.time_follow(follow_home, lines)

        for case in cases:
            median = _median(case.samples)
            verdict = case.target
            if case.check is not None:
                ok = median is not None and base is not None and case.check(median, base)
                verdict = "pass" if ok else "FAIL"
            note = f"{len(case.errors)} errors: {case.errors[0]}" if case.errors else ""
            self.rows.append(Row(case.label, median, case.target, verdict, note))

        def absolute(label: str, values: list[float], limit_ms: float | None, note: str) -> None:
            value = max(values) if label.endswith("max") else _median(values)
            if limit_ms is None:
                self.rows.append(Row(label, value, note=note))
                return
            ok = value is not None and value * 1000 < limit_ms
            self.rows.append(
                Row(label, value, f"< {limit_ms:g} ms", "pass" if ok else "FAIL", note)
            )

        first_err = f"{len(start_errors)} errors: {start_errors[0]}" if start_errors else ""
        absolute("start -> first line in log", to_line, TARGET_START_MS, first_err)
        absolute("start command returns", to_return, None, "")
        note = f"{follow_errors[0]}" if follow_errors else ""
        absolute("logs -f delay, median", delays, TARGET_LOGS_MS, note)
        absolute("logs -f delay, max", delays, TARGET_LOGS_MS, note)
        note = f"{follow_errors_10k[0]}" if follow_errors_10k else ""
        absolute("logs -f delay, 10,000 records, median", delays_10k, None, note)
        absolute("logs -f delay, 10,000 records, max", delays_10k, None, note)

        self.say("write path: 100 and 10,000 finished jobs")
        self.write_path_rows()
        self.print_table(base, len(delays), len(delays_10k))

    def print_table(self, base: float | None, ticks: int, ticks_10k: int) -> None:
        """The results, one row per case, and how they were taken."""
        header = ("case", "median ms", "x python", "target", "result")
        body = []
        for row in self.rows:
            ms = "-" if row.median_s is None else f"{row.median_s * 1000:.1f}"
            ratio = "-" if row.median_s is None or not base else f"{row.median_s / base:.2f}x"
            body.append((row.label, ms, ratio, row.target, row.verdict))
        widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
        aligns = ["<", ">", ">", "<", "<"]

        def fmt(cells: Sequence[str]) -> str:
            parts = [f"{c:{a}{w}}" for c, a, w in zip(cells, aligns, widths, strict=True)]
            return "  ".join(parts).rstrip()

        cores = os.cpu_count()
        print()
        print(f"handyjobs CLI benchmark: {cores} cores, Python {sys.version.split()[0]}")
        print(f"commands: {self.cli_kind} next to the interpreter ({Path(self.cli[0]).name})")
        print(f"median of {self.runs} runs per case (one warm-up run not counted);")
        print("bytecode cached in a temp PYTHONPYCACHEPREFIX (as for an installed package);")
        if ticks or ticks_10k:
            print(
                f"logs -f over {ticks} lines (empty registry) and {ticks_10k} lines (10,000 "
                "records)"
            )
        print()
        print(fmt(header))
        print(fmt(["-" * w for w in widths]))
        for cells in body:
            print(fmt(cells))
        notes = [row for row in self.rows if row.note]
        if notes:
            print()
            for row in notes:
                print(f"note: {row.label}: {row.note}")
        print()
        print("pipe: stdout read from a pipe (plain columns); tty: from a pseudo-terminal")
        print(f"({PTY_SIZE[1]}x{PTY_SIZE[0]}), the coloured table a person sees.")
        sys.stdout.flush()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``--runs N``, ``--quick``, ``--commands`` and ``--compare DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per case (default 15)")
    parser.add_argument("--quick", action="store_true", help="5 runs per case, shorter logs -f")
    parser.add_argument(
        "--commands", action="store_true", help="only each command's start-up against python"
    )
    parser.add_argument(
        "--compare", metavar="DIR", help="also time the commands of the checkout in DIR"
    )
    parser.add_argument(
        "--here", action="store_true", help="this interpreter as it is, not an installed copy"
    )
    args = parser.parse_args(argv)
    if args.quick and args.runs == 15:
        args.runs = 5
    args.runs = max(1, args.runs)
    return args


def installed_copy(folder: Path) -> Path:
    """A virtual environment in ``folder`` with this checkout installed as a user's install
    is (the package copied, a console script) and this interpreter's dependencies on its path;
    its python."""
    import site
    import venv

    venv.create(folder, with_pip=False, symlinks=True)
    python = folder / "bin" / "python"
    found = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    purelib = Path(found.stdout.strip())
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    shutil.copytree(
        Path(__file__).resolve().parent.parent / "handyjobs",
        purelib / "handyjobs",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    script = folder / "bin" / "handyjobs"
    script.write_text(
        f"#!{python}\nimport sys\nfrom handyjobs.cli import main\n"
        "if __name__ == '__main__':\n    sys.exit(main())\n"
    )
    script.chmod(0o755)
    return python


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; always 0 (it reports, it does not gate)."""
    args = parse_args(argv)
    if not args.here and not os.environ.get("HANDYJOBS_BENCH_INSTALLED"):
        # Again, under an installed copy (see the module's docstring).
        with tempfile.TemporaryDirectory(prefix="handyjobs-bench-venv-") as tmp:
            python = installed_copy(Path(tmp))
            env = {**os.environ, "HANDYJOBS_BENCH_INSTALLED": "1"}
            env.pop("PYTHONPATH", None)
            argv_again = [str(python), str(Path(__file__).resolve()), *(argv or sys.argv[1:])]
            return subprocess.run(argv_again, env=env, check=False).returncode
    if shutil.which("tmux") is None:
        print("tmux is not installed: the start and logs -f cases need it", file=sys.stderr)
        return 0
    bench = Bench(args.runs, args.quick)
    try:
        if args.commands:
            bench.run_commands(args.compare)
        else:
            bench.run()
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
    finally:
        bench.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
