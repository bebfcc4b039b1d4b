"""Job states, specs and records as data, with their JSON form and schema version."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

#: Bumped whenever the registry's JSON layout changes; older files are migrated on load.
SCHEMA_VERSION = 1

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class JobState(str, enum.Enum):
    """Where a job is in its life; the last four are end states."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    LOST = "lost"

    @property
    def active(self) -> bool:
        """True while the job waits for GPUs or runs."""
        return self in (JobState.QUEUED, JobState.RUNNING)


def utcnow() -> str:
    """The current time as ISO-8601 UTC with milliseconds, e.g. ``2026-11-24T23:08:55.123Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """Parse a timestamp written by :func:`utcnow` (Python 3.10 lacks the ``Z`` suffix)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class JobSpec:
    """What the user asked for; ``restart`` starts the same spec again."""

    script: str
    args: tuple[str, ...] = ()
    module: bool = False
    cwd: str = "."
    python: str = "python"
    gpus: tuple[int, ...] | None = None
    ngpus: int | None = None
    cpu: bool = False
    nproc: int | None = None
    env: tuple[tuple[str, str], ...] = ()
    wait: bool = False
    force: bool = False

    @property
    def procs(self) -> int:
        """Processes per run: ``--nproc``, else one per pinned GPU, else one."""
        if self.nproc is not None:
            return self.nproc
        if self.gpus:
            return len(self.gpus)
        if self.ngpus:
            return self.ngpus
        return 1

    @property
    def command(self) -> str:
        """The command as the user would read it: ``train.py --lr 3e-4`` or ``-m pkg.train``."""
        import shlex

        script = self.script
        if not self.module and script.startswith(self.cwd.rstrip("/") + "/"):
            script = script[len(self.cwd.rstrip("/")) + 1 :]  # as typed, relative to cwd
        head = ["-m", script] if self.module else [script]
        return shlex.join([*head, *self.args])

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "script": self.script,
            "args": list(self.args),
            "module": self.module,
            "cwd": self.cwd,
            "python": self.python,
            "gpus": None if self.gpus is None else list(self.gpus),
            "ngpus": self.ngpus,
            "cpu": self.cpu,
            "nproc": self.nproc,
            "env": dict(self.env),
            "wait": self.wait,
            "force": self.force,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobSpec:
        """Inverse of :meth:`to_dict`; unknown keys are ignored so newer files still load."""
        gpus = d.get("gpus")
        return cls(
            script=d["script"],
            args=tuple(d.get("args", ())),
            module=bool(d.get("module", False)),
            cwd=d.get("cwd", "."),
            python=d.get("python", "python"),
            gpus=None if gpus is None else tuple(int(g) for g in gpus),
            ngpus=d.get("ngpus"),
            cpu=bool(d.get("cpu", False)),
            nproc=d.get("nproc"),
            env=tuple(sorted(dict(d.get("env") or {}).items())),
            wait=bool(d.get("wait", False)),
            force=bool(d.get("force", False)),
        )


@dataclass
class Run:
    """One run of a job: created by ``start`` or ``restart``, ended by its runner."""

    run: int
    run_id: str
    state: JobState
    created_at: str
    started_at: str | None = None
    ended_at: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    gpus: tuple[int, ...] = ()
    nproc: int = 1
    rendezvous: str | None = None
    pids: dict[str, int] = field(default_factory=dict)
    stop_requested: bool = False
    waiting_for: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "run": self.run,
            "run_id": self.run_id,
            "state": self.state.value,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "gpus": list(self.gpus),
            "nproc": self.nproc,
            "rendezvous": self.rendezvous,
            "pids": dict(self.pids),
            "stop_requested": self.stop_requested,
            "waiting_for": self.waiting_for,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Run:
        """Inverse of :meth:`to_dict`."""
        return cls(
            run=int(d["run"]),
            run_id=str(d["run_id"]),
            state=JobState(d["state"]),
            created_at=d["created_at"],
            started_at=d.get("started_at"),
            ended_at=d.get("ended_at"),
            exit_code=d.get("exit_code"),
            signal=d.get("signal"),
            gpus=tuple(int(g) for g in d.get("gpus") or ()),
            nproc=int(d.get("nproc", 1)),
            rendezvous=d.get("rendezvous"),
            pids={str(k): int(v) for k, v in (d.get("pids") or {}).items()},
            stop_requested=bool(d.get("stop_requested", False)),
            waiting_for=d.get("waiting_for"),
        )


@dataclass
class JobRecord:
    """Everything handyjobs knows about one job; the last of ``runs`` is the current run."""

    name: str
    spec: JobSpec
    session: str
    log_path: str
    created_at: str
    runs: list[Run]
    git: dict[str, Any] | None = None

    @property
    def current(self) -> Run:
        """The newest run."""
        return self.runs[-1]

    @property
    def state(self) -> JobState:
        """The state of the newest run."""
        return self.current.state

    def duration_s(self, now: datetime | None = None) -> float | None:
        """Seconds the current run has run (so far, while it runs)."""
        run = self.current
        if run.started_at is None:
            return None
        end = parse_time(run.ended_at) if run.ended_at else (now or datetime.now(timezone.utc))
        return max(0.0, (end - parse_time(run.started_at)).total_seconds())

    def to_dict(self) -> dict[str, Any]:
        """JSON form: the current run's fields flat at the top, the history under ``runs``.

        ``name`` comes first and ``state`` second: the registry's fast reader relies on it.
        """
        run = self.current
        return {
            "name": self.name,
            "state": run.state.value,
            "command": self.spec.command,
            "gpus": list(run.gpus),
            "nproc": run.nproc,
            "waiting_for": run.waiting_for,
            "created_at": self.created_at,
            "started_at": run.started_at,
            "ended_at": run.ended_at,
            "exit_code": run.exit_code,
            "signal": run.signal,
            "session": self.session,
            "log_path": self.log_path,
            "git": self.git,
            "spec": self.spec.to_dict(),
            "runs": [r.to_dict() for r in self.runs],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobRecord:
        """Inverse of :meth:`to_dict`; the flat fields are derived, so only ``runs`` is read."""
        return cls(
            name=d["name"],
            spec=JobSpec.from_dict(d["spec"]),
            session=d.get("session", d["name"]),
            log_path=d["log_path"],
            created_at=d["created_at"],
            runs=[Run.from_dict(r) for r in d["runs"]],
            git=d.get("git"),
        )

    def with_run(self, run: Run) -> JobRecord:
        """A copy with ``run`` appended as the new current run."""
        return replace(self, runs=[*self.runs, run])


def exit_summary(run: Run) -> str:
    """How a run ended, in words: ``0``, ``1``, ``SIGTERM``; empty while it runs."""
    import signal as _signal

    if run.signal is not None:
        try:
            return _signal.Signals(run.signal).name
        except ValueError:
            return f"signal {run.signal}"
    if run.exit_code is not None:
        return str(run.exit_code)
    return ""


def returncode(run: Run) -> int:
    """The shell-style code of a finished run: exit code, or 128 + signal; 1 when unknown."""
    if run.signal is not None:
        return 128 + run.signal
    if run.exit_code is not None:
        return run.exit_code
    return 1
