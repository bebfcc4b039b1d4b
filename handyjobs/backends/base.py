"""The backend seam: how the core reaches the sessions and processes that run a job.

The core (``jobs`` and ``lifecycle``) never calls tmux, Slurm or ``kill`` itself; it asks the
run's backend, named on every run (``run.backend``) with the handle the backend gave back at
launch (``run.handle``). A backend launches the *runner* (``python -m handyjobs.jobside.runner HOME
NAME RUN_ID``), which is the same everywhere: it starts the job, tees its output and writes
its outcome. So a backend only has to say how to start a runner somewhere, whether it is
still there, how to hold, pause and end what it started, and how a person can look at it.

Adding a backend: a folder ``backends/<name>/`` with ``backend.py`` (``BACKEND``, a class that
satisfies :class:`Backend`) and ``jobside.py`` (``JobSide``, satisfying :class:`JobSide`: what
the runner does there), its name in :data:`KNOWN`, and the shared lifecycle tests run against
it. A backend whose runs are
queued by a scheduler of its own (Slurm) says so with ``queues = True``: handyjobs' queue then
never grants its runs, and reconciling asks it for the scheduler's view (:meth:`observe`)
instead of judging the runner by a local pid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from handyjobs.backends import module
from handyjobs.core.procs import Ended
from handyjobs.core.records import ClusterState, Cost, JobRecord, JobSpec, ProcId, Reason, Run
from handyjobs.jobside.launch import Launch, RunContext
from handyjobs.structs import Protocol, field, frozen


@frozen
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
    #: Held from the start (``start --hold``): a scheduler of the backend's own holds it.
    held: bool = False


@frozen
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

    def cancel_many(self, runs: Sequence[Run]) -> list[str]:
        """End many runs in one call where a scheduler of the backend's own can (one cancel
        for all): the ids of the runs it took, which ``terminate`` then only waits for; []
        when runs end one by one. Those it did not take are left to ``terminate``."""

    def end_runner(self, run: Run) -> None:
        """End a runner that does not finish by itself, and its session if we tagged it."""

    def session_alive(self, run: Run) -> bool:
        """True while the session we made for this run (and tagged with its id) exists."""

    def attach_argv(self, run: Run) -> list[str]:
        """The command that puts the user's terminal into the run's session."""

    def send(self, run: Run, text: str) -> None:
        """Type ``text`` and Enter into the job's terminal (its standard input)."""

    def hold(self, run: Run, held: bool) -> None:
        """Hold a queued run in the backend's own scheduler (``held``), or release it there;
        raise, with what to do next, when it refuses. Without a scheduler of its own there is
        nothing to do: handyjobs' queue holds the run."""

    def pause(self, run: Run, paused: bool) -> int | None:
        """Stop (``paused``) or continue every process of a running run: how many got it, or
        None when a scheduler of the backend's own did it; raise when that is refused."""

    def signal(self, run: Run, sig: int) -> int | None:
        """Send ``sig`` to every process of a running run (identity checked): how many got it,
        or None when the backend's scheduler did it; raise when that is refused."""

    def log_path(self, name: str, root: Path) -> Path:
        """Where the job's log is."""

    def observe(self, run: Run) -> ClusterState | None:
        """The scheduler's view of the run; None when there is none or it cannot be had now."""


class JobControl(Protocol):
    """What the runner offers its backend's job side while the job runs."""

    #: The run's id: the marker every process of the run carries.
    run_id: str

    def main_pid(self) -> int | None:
        """The job's main process (the runner's child), once started."""

    def say(self, text: str) -> None:
        """Write one ``handyjobs:`` line into the job's log."""

    def record_requeue(self, requeued: bool) -> None:
        """Record (True) or take back (False) that the run was requeued by its scheduler."""


class JobSide(Protocol):
    """A backend's half inside the job's session: how the runner starts and ends the job there.

    The runner is the same everywhere; what differs by backend is asked of this object: who
    grants the run, which signals mean what, the command that starts the job's processes, how
    the run describes where it runs, and whether a clean exit after a warning means "again".
    """

    #: A scheduler of the backend's own grants, signals and requeues the run.
    scheduled: bool
    #: Someone may watch the runner's terminal: echo the job's output there, pass input on.
    interactive: bool
    #: The scheduler ended the job: the end is the scheduler's to name.
    ended_by_scheduler: bool

    def take_signals(self, control: JobControl) -> None:
        """Install the backend's signal handling once the runner knows its run."""

    def ended_before_start(self) -> str | None:
        """A line for the log when the job must not start at all; None to go on."""

    def where(self, env: Mapping[str, str]) -> str:
        """Where the run runs, for the log's header ("" when there is nothing to add)."""

    def attempt(self, env: Mapping[str, str]) -> int:
        """Which start of the run this is: 0, or how often the scheduler requeued it."""

    def command(
        self,
        spec: JobSpec,
        ctx: RunContext,
        base_env: Mapping[str, str],
        pane_env: Mapping[str, str],
    ) -> Launch:
        """The argv and environment that start the job's processes."""

    def job_ended(self) -> list[str]:
        """The job's main process ended: stop what repeats; lines for the log."""

    def stop_reason(self, exit_code: int | None) -> Reason | None:
        """Why a job that exited so ended early by the scheduler's word (its time limit)."""

    def goes_on(self, spec: JobSpec, exit_code: int | None) -> bool:
        """True when the run goes on after this exit (requeued): record no outcome."""

    def cost(self, measured: Cost) -> Cost:
        """What the run cost, given what the runner measured on its own machine."""


class Describe(Protocol):
    """A backend's part of the views: its own words for its runs (used by views/render)."""

    #: The backend's (or its scheduler's) name as people write it.
    title: str
    #: Scheduler end states that say no more than the run's own state.
    plain_ends: tuple[str, ...]

    def gpus(self, record: JobRecord) -> str | None:
        """The GPUS column for the run, or None to show the run's own GPUs."""

    def nnodes(self, spec: JobSpec) -> int | None:
        """How many nodes the job asked the backend for, or None when it did not say."""

    def reason_words(self, key: str) -> str | None:
        """A scheduler's pending reason in words, when it is a well-known one."""

    def place(self, record: JobRecord) -> str:
        """Where the current run is, in a few words: ``tmux session exp1``, ``Slurm job 42``."""

    def show_fields(self, record: JobRecord) -> list[tuple[str, str]]:
        """``show``'s lines about where the run is: a session, a scheduler's job."""

    def submitted(self, record: JobRecord, state: str) -> list[str]:
        """What ``start`` prints when the backend took the job; [] to let ``start`` say it."""

    def cancelled(self, record: JobRecord) -> str | None:
        """What ``stop`` says when the backend's scheduler ended the job's processes."""

    def paused(self, record: JobRecord, paused: bool) -> str | None:
        """What ``pause`` (``resume``) says when the backend's scheduler did it."""

    def signalled(self, record: JobRecord, sig: str) -> str | None:
        """What ``kill`` says when the backend's scheduler sent the signal (None: it counted)."""

    def silence(self) -> str | None:
        """One line when the backend's scheduler did not answer this command (the states
        shown are its last answer), else None."""


class GroupLauncher(Protocol):
    """A backend that can start many runs as one submission (Slurm: a job array)."""

    def launch_group(self, reqs: Sequence[LaunchRequest], parallel: int | None) -> list[Launched]:
        """Start every runner in one submission, at most ``parallel`` running at once (None:
        no limit): one :class:`Launched` per request, in order; raise, having left nothing
        behind, when that fails."""


def group_launcher(backend: Backend) -> GroupLauncher | None:
    """The backend's way to start many runs as one, or None when it starts them one by one."""
    # By its method, not isinstance: the interfaces are plain classes at run time (structs).
    return backend if callable(getattr(backend, "launch_group", None)) else None  # type: ignore[return-value]


def get(name: str) -> Backend:
    """The backend of that name (``tmux`` for runs on this machine, ``slurm`` for a cluster)."""
    backend: Backend = module(name, "backend").BACKEND()
    return backend


def job_side(name: str) -> JobSide:
    """The job side of the backend of that name, for the runner."""
    side: JobSide = module(name, "jobside").JobSide()
    return side


def early_signals(name: str) -> None:
    """The runner's first act under a scheduler: catch its signals until the runner is ready."""
    early = getattr(module(name, "jobside"), "early", None)
    if early is not None:
        early()
