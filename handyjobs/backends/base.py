"""The backend seam: how the core reaches the sessions and processes that run a job.

The core (``jobs`` and ``lifecycle``) never calls tmux, Slurm or ``kill`` itself; it asks the
run's backend, named on every run (``run.backend``) with the handle the backend gave back at
launch (``run.handle``). A backend launches the *runner* (``python -m handyjobs.jobside.runner HOME
NAME RUN_ID``), which is the same everywhere: it starts the job, tees its output and writes
its outcome. So a backend only has to say how to start a runner somewhere, whether it is
still there, how to end what it started, and how a person can look at it.

Adding a backend: write ``backends/<name>.py`` with a class that satisfies :class:`Backend`,
add it to :func:`get`, and run the shared lifecycle tests against it. A backend whose runs are
queued by a scheduler of its own (Slurm) says so with ``queues = True``: handyjobs' queue then
never grants its runs, and reconciling asks it for the scheduler's view (:meth:`observe`)
instead of judging the runner by a local pid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from handyjobs.core.procs import Ended
from handyjobs.core.records import ClusterState, JobSpec, ProcId, Run


@dataclass(frozen=True)
class LaunchRequest:
    """Start a runner: its argv and folder, the run it serves, the session name wanted."""

    name: str
    run_id: str
    session: str
    argv: Sequence[str]
    cwd: str
    #: The job's spec and run number, for backends that describe the job to a scheduler.
    spec: JobSpec | None = None
    run: int = 1
    #: The caller's environment (a scheduler's client reads its settings, e.g. SLURM_CONF).
    env: Mapping[str, str] = field(default_factory=dict)
    #: The current runs of the jobs named by ``--after``: a scheduler's dependency (Slurm);
    #: this machine's queue waits for them itself.
    after: Mapping[str, Run] = field(default_factory=dict)


@dataclass(frozen=True)
class Launched:
    """What a backend gives back: its handle for the run, and the runner's identity."""

    handle: dict[str, str]
    runner: ProcId | None


class Backend(Protocol):
    """The interface every backend implements."""

    name: str
    #: True when a scheduler of the backend's own queues and starts its runs (Slurm).
    queues: bool

    def check(self) -> None:
        """Raise a :class:`~handyjobs.errors.HandyjobsError` when the backend cannot be used."""

    def session_name(self, wanted: str, run: int, run_id: str) -> str:
        """A session name for a new run: ``wanted`` unless something not ours holds it."""

    def launch(self, req: LaunchRequest) -> Launched:
        """Start the runner; raise (having left nothing behind) when that fails."""

    def runner_alive(self, run: Run) -> bool:
        """True while the run's runner exists (identity checked, never a bare pid)."""

    def leftover_pids(self, run: Run) -> tuple[int, ...]:
        """Processes of the run still alive, found by its marker."""

    def terminate(self, run: Run, grace_s: float) -> Ended:
        """End every process of the run but the runner: SIGTERM, then SIGKILL after grace."""

    def end_runner(self, run: Run) -> None:
        """End a runner that does not finish by itself, and its session if we tagged it."""

    def session_alive(self, run: Run) -> bool:
        """True while the session we made for this run (and tagged with its id) exists."""

    def attach_argv(self, run: Run) -> list[str]:
        """The command that puts the user's terminal into the run's session."""

    def send(self, run: Run, text: str) -> None:
        """Type ``text`` and Enter into the job's terminal (its standard input)."""

    def log_path(self, name: str, root: Path) -> Path:
        """Where the job's log is."""

    def observe(self, run: Run) -> ClusterState | None:
        """The scheduler's view of the run; None when there is none or it cannot be had now."""


def get(name: str) -> Backend:
    """The backend of that name (``tmux`` for runs on this machine, ``slurm`` for a cluster)."""
    if name == "tmux":
        from handyjobs.backends.tmux.backend import TmuxBackend

        return TmuxBackend()
    if name == "slurm":
        from handyjobs.backends.slurm.backend import SlurmBackend

        return SlurmBackend()
    from handyjobs.errors import UsageError

    raise UsageError(f"unknown backend {name!r}; this handyjobs knows: tmux, slurm")


def for_spec(spec: JobSpec) -> Backend:
    """The backend a spec asks for: Slurm for ``--slurm``, else tmux on this machine."""
    return get("slurm" if spec.slurm is not None else "tmux")
