"""Fixtures: every test gets its own HANDYJOBS_HOME, HOME and tmux socket, and leaves nothing."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from handyjobs.core import registry
from handyjobs.core.records import JobRecord, JobSpec, JobState, Run, utcnow

REPO = Path(__file__).resolve().parent.parent

# Tests that share one thing of the machine (markers slurm and gpu: the one local Slurm, a real
# GPU) run one after another in a pytest of their own, after the two workers that run every
# other test (scripts/test.sh); every other test has its own state folder, home and tmux socket.


def wait_until(
    cond: Callable[[], object],
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "condition",
) -> object:
    """Poll ``cond`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


SLEEPER = """
import os, sys, time
print("pid", os.getpid(), "rank", os.environ.get("RANK"), flush=True)
while not os.path.exists(sys.argv[1] if len(sys.argv) > 1 else "/nonexistent-never"):
    time.sleep(0.05)
print("done", flush=True)
"""


def show(box: Sandbox, name: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``handyjobs show NAME --json`` (``env``: variables added for this call)."""
    done = box.cli("show", name, "--json", env=env, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


#: The most a wait lets pass without asking the real CLI. Some changes are made only when a
#: command looks (a runner found gone becomes "lost", a queued job gets its turn), so the CLI
#: is asked now and then even while the cheap read in this process shows nothing yet.
CLI_EVERY_S = 1.0


def confirm_when(
    cheap: Callable[[], bool], dear: Callable[[], Any], every_s: float = CLI_EVERY_S
) -> Callable[[], Any]:
    """A probe for :func:`wait_until` that runs ``dear`` (a CLI call) only when it can pay.

    ``cheap`` reads files in this process; ``dear`` runs the real CLI, which is the answer.
    ``dear`` runs at once, then whenever ``cheap`` holds (0.25 s after the last call ended at
    the soonest) and otherwise ``every_s`` after the last call ended. A CLI call costs a Python
    start-up (about 0.4 s of CPU, seconds on a loaded machine): called back to back, as the
    waits did before, it took one of a 2-core machine's cores from the jobs being waited for.
    """
    done = -float("inf")

    def probe() -> Any:
        nonlocal done
        hint = False
        with contextlib.suppress(Exception):  # a file being replaced: the CLI decides
            hint = cheap()
        if time.monotonic() - done < (0.25 if hint else every_s):
            return None
        try:
            return dear()
        finally:
            done = time.monotonic()

    return probe


def _record(box: Sandbox, name: str, env: dict[str, str] | None = None) -> JobRecord | None:
    """The job's record as the registry holds it now, read in this process without a lock."""
    home = (env or {}).get("HANDYJOBS_HOME")
    return registry.load_one(name, Path(home) if home else box.home)


def wait_state(
    box: Sandbox,
    name: str,
    *states: str,
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Poll until the job is in one of ``states``; return ``show --json`` of it then."""

    def recorded() -> bool:
        record = _record(box, name, env)
        return record is not None and record.state.value in states

    def shown() -> dict[str, Any] | None:
        rec = show(box, name, env)
        return rec if rec["state"] in states else None

    probe = confirm_when(recorded, shown)
    return wait_until(probe, timeout, 0.05, f"{name} to be {'/'.join(states)}")  # type: ignore[return-value]


def log_of(box: Sandbox, name: str) -> str:
    """``handyjobs logs NAME``."""
    return box.cli("logs", name, check=True).stdout


def wait_log(
    box: Sandbox,
    name: str,
    cond: str | Callable[[str], bool],
    timeout: float = 20,
    what: str | None = None,
) -> str:
    """Poll until ``handyjobs logs NAME`` shows ``cond`` (a text it contains, or a test).

    The log file is read directly between CLI calls; the CLI's own output decides.
    """
    test = cond if callable(cond) else (lambda text: cond in text)

    def written() -> bool:
        record = _record(box, name)
        if record is None:
            return False
        return test(Path(record.log_path).read_bytes().decode(errors="replace"))

    def shown() -> str | None:
        text = log_of(box, name)
        return text if test(text) else None

    why = what or (f"{cond!r} in the log of {name}" if isinstance(cond, str) else f"{name}'s log")
    return wait_until(confirm_when(written, shown), timeout, 0.05, why)  # type: ignore[return-value]


def make_record(
    name: str,
    state: JobState = JobState.SUCCEEDED,
    created: str | None = None,
    run_id: str | None = None,
) -> JobRecord:
    """A plausible record (no process behind it), for registry tests fast and end to end."""
    stamp = created or utcnow()
    run = Run(
        run=1,
        run_id=run_id or f"id-{name}",
        state=state,
        created_at=stamp,
        started_at=stamp,
        ended_at=None if state.active else stamp,
        exit_code=None if state.active else 0,
        handle={"session": name},
    )
    return JobRecord(
        name=name,
        spec=JobSpec(script="/w/train.py", args=("--x", "1"), cwd="/w"),
        log_path=f"/s/jobs/{name}/output.log",
        created_at=stamp,
        runs=[run],
    )


@dataclass
class Sandbox:
    """An isolated handyjobs world: state folder, home, tmux socket, and a CLI runner."""

    root: Path
    env: dict[str, str]

    @property
    def home(self) -> Path:
        """The HANDYJOBS_HOME of this sandbox."""
        return Path(self.env["HANDYJOBS_HOME"])

    def cli(
        self,
        *args: str,
        check: bool | None = None,
        timeout: float = 120,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real CLI (``python -m handyjobs``) in a subprocess."""
        proc = subprocess.run(
            [sys.executable, "-m", "handyjobs", *args],
            env={**self.env, "PWD": str(cwd or self.root), **(env or {})},
            cwd=cwd or self.root,
            text=True,
            capture_output=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check is None:
            return proc
        if check and proc.returncode != 0:
            pytest.fail(
                f"handyjobs {' '.join(args)} exited {proc.returncode}:\n"
                f"{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run tmux on this sandbox's socket; where tmux is missing, a failed call."""
        argv = ["tmux", "-L", self.env["HANDYJOBS_TMUX_SOCKET"], *args]
        try:
            return subprocess.run(argv, capture_output=True, text=True)
        except FileNotFoundError:  # the fast layer runs where tmux is not installed
            return subprocess.CompletedProcess(argv, 127, "", "tmux: not found\n")

    def write(self, name: str, text: str) -> Path:
        """Write a file (a test script) into the sandbox and return its path."""
        path = self.root / name
        path.write_text(text)
        return path


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    """A throwaway HANDYJOBS_HOME and tmux socket; kills the tmux server and strays at the end."""
    sock = f"hj-test-{uuid.uuid4().hex[:10]}"
    env = dict(os.environ)
    # COLUMNS and LINES: pytest-xdist's workers set them to 80x24, which would override the size
    # of the terminal a test gives the CLI (a user's shell does not export them).
    for key in list(env):
        if key.startswith("HANDYJOBS_") or key in ("TMUX", "TMUX_PANE", "COLUMNS", "LINES"):
            del env[key]
    env.update(
        HANDYJOBS_HOME=str(tmp_path / "state"),
        HANDYJOBS_TMUX_SOCKET=sock,
        HOME=str(tmp_path / "home"),
        NO_COLOR="1",
        OMP_NUM_THREADS="1",
        # the python that runs the tests is the one on the user's PATH (an activated venv)
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
    )
    (tmp_path / "home").mkdir()
    for key in ("HANDYJOBS_HOME", "HANDYJOBS_TMUX_SOCKET", "HOME"):
        monkeypatch.setenv(key, env[key])
    for key in ("HANDYJOBS_FAKE_GPUS", "HANDYJOBS_GPUS", "TMUX", "TMUX_PANE"):
        monkeypatch.delenv(key, raising=False)
    box = Sandbox(tmp_path, env)
    yield box
    reap(box)


def reap(box: Sandbox) -> None:
    """Kill every process a test's jobs left behind (runners too), then the tmux server."""
    import signal

    from handyjobs.core import procs

    state = box.home / "jobs"
    run_ids = {p.name[4:].split(".")[0] for p in state.glob("*/run-*.json")}
    for run_id in run_ids:
        procs.terminate(run_id, grace_s=0, first=signal.SIGKILL)
        for pid in _runner_pids(run_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    socket = Path(box.env.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{os.getuid()}"
    socket /= box.env["HANDYJOBS_TMUX_SOCKET"]
    if socket.exists():  # else no server ever started here (the fast layer): no tmux to call
        box.tmux("kill-server")
        with contextlib.suppress(OSError):  # a killed server leaves its socket file behind
            socket.unlink()


def _runner_pids(run_id: str) -> list[int]:
    """Runners of a run: they carry HANDYJOBS_RUNNER_OF=<run id>."""
    marker = f"HANDYJOBS_RUNNER_OF={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
    return found


def run_in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``handyjobs ARGV`` in this process (the fast layer): exit code, stdout, stderr."""
    from handyjobs.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    out = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 0), out.out, out.err


def max_overlap(stamps: list[dict[str, Any]]) -> int:
    """The most runs at once, from each run's ``start`` and ``end`` times."""
    events = sorted([(s["start"], 1) for s in stamps] + [(s["end"], -1) for s in stamps])
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak
