"""Job states, specs, runs, outcomes and reasons as typed data, with their JSON form.

Everything the registry, the runner's status file and the launch file hold is one of these
structs (:mod:`handyjobs.structs`), written and read by the one codec of
:mod:`handyjobs.core.codec` (each record declares there only where its JSON departs from the
plain rule), with a schema version.
Reasons (why a run waits, why it was lost) are data here; :mod:`handyjobs.views.render` turns
them into words.
"""

from __future__ import annotations

import re
import shlex
from datetime import datetime, timezone

from handyjobs.core.codec import AS_OBJECT, OMIT_DEFAULT, JsonRecord, Layout

# Re-exported: the records' enums live in a module of their own, light to import.
from handyjobs.core.states import BlockKind as BlockKind
from handyjobs.core.states import JobState as JobState
from handyjobs.core.states import LostKind as LostKind
from handyjobs.structs import field, frozen, mutable, replace

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from typing import Any

#: Bumped whenever a JSON layout changes; older files are migrated on load (see registry.py).
SCHEMA_VERSION = 2

#: Names of new jobs: they start with a letter or digit, so that no printed hint such as
#: ``handyjobs stop NAME`` can be read as an option.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@frozen
class Reason(JsonRecord):
    """Why a run was lost or failed to start: a kind, and data (never a sentence) about it."""

    kind: LostKind
    #: An error as the system gave it ("OSError: [Errno 28] ..."), a signal's name, or the
    #: state of the job named in ``job`` ("failed", or "gone").
    detail: str | None = None
    #: Processes of the run still alive when it was declared lost.
    pids: tuple[int, ...] = ()
    #: The other job involved (a dependency that failed).
    job: str | None = None


@frozen
class GpuUser(JsonRecord):
    """A process seen on a GPU, as discovery reported it (user only when /proc vouches)."""

    pid: int
    user: str | None = None
    name: str | None = None


@frozen
class Blocker(JsonRecord):
    """Why one GPU is not free for a run."""

    gpu: int
    kind: BlockKind
    # Each blocker kind fills one or two of these; the others stay out of its JSON.
    job: str | None = field(default=None, metadata=OMIT_DEFAULT)
    processes: tuple[GpuUser, ...] = field(default=(), metadata=OMIT_DEFAULT)
    used_mib: int | None = field(default=None, metadata=OMIT_DEFAULT)
    threshold_mib: int | None = field(default=None, metadata=OMIT_DEFAULT)
    detail: str | None = field(default=None, metadata=OMIT_DEFAULT)


@frozen
class Wait(JsonRecord):
    """Why a queued run cannot start yet: how many GPUs it needs, how many are free, blockers."""

    needed: int
    free: int
    #: True when the run asked for a count (``--ngpus``), not for GPUs by number.
    by_count: bool = False
    #: Queue position, 1 for the first queued run.
    position: int | None = None
    blockers: tuple[Blocker, ...] = ()
    #: Jobs it starts after (``--after``) that have not ended yet.
    after: tuple[str, ...] = ()
    #: A parallel limit that is reached: how many may run, how many do, and whose limit
    #: (a group's, or None for the machine-wide one).
    limit: int | None = None
    running: int | None = None
    group: str | None = None
    #: When a cluster scheduler queues the run rather than handyjobs: its name and its own
    #: reason, in its own words (Resources, Priority, ...). Written only then, as before.
    scheduler: str | None = field(default=None, metadata=OMIT_DEFAULT)
    reason: str | None = field(default=None, metadata=OMIT_DEFAULT)
    #: The user holds the run (``hold``, ``start --hold``): out of the queue until released.
    held: bool = field(default=False, metadata=OMIT_DEFAULT)
    #: A run of its ``group`` is paused: the group starts nothing new until it is resumed.
    paused: bool = field(default=False, metadata=OMIT_DEFAULT)
    #: The settings file, when it cannot be read: the queue starts nothing until it is fixed
    #: (what is wrong with it in ``reason``, as the parser said).
    config: str | None = field(default=None, metadata=OMIT_DEFAULT)

    @property
    def for_gpus(self) -> bool:
        """True when the run waits for GPUs (not only for dependencies, a slot or a release)."""
        return self.needed > 0 and not self.after and self.limit is None and not self.held


def utcnow() -> str:
    """The current time as ISO-8601 UTC with milliseconds, e.g. ``2026-11-24T23:08:55.123Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """Parse a timestamp written by :func:`utcnow` (Python 3.10 lacks the ``Z`` suffix)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@frozen
class GpuPolicy(JsonRecord):
    """The GPU settings a job was started under: the GPUs it may use, the busy threshold."""

    allowed: tuple[int, ...] | None = None
    threshold_mib: int = 1024


@frozen
class Rendezvous(JsonRecord):
    """One node's part of a job on several machines: torchrun's c10d rendezvous, as started."""

    nnodes: int
    #: 0 on the node that hosts the rendezvous store; torchrun itself orders the nodes' ranks.
    node_rank: int
    #: ``HOST:PORT`` of the store, on the node of rank 0.
    endpoint: str
    #: Shared by every node of the job; made up by the start on node 0.
    rdzv_id: str


@frozen
class BatchSpec(JsonRecord):
    """What a job asks of a cluster's batch scheduler: its options, named as it names them."""

    nodes: int = 1
    gpus_per_node: int | None = None
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    mem: str | None = None
    constraint: str | None = None
    #: More sbatch options, each one ``--opt=value`` as the user gave it.
    extra: tuple[str, ...] = ()
    #: Requeue after the time-limit warning (and let the scheduler requeue on preemption).
    requeue: bool = False
    #: Seconds before the time limit at which the batch script gets SIGUSR1.
    signal_before_s: int = 60
    #: CPUs for each GPU (None: the node's CPUs shared out over its GPUs, when known).
    cpus_per_gpu: int | None = None
    #: Memory for each GPU, a size as the scheduler takes it (``32G``).
    mem_per_gpu: str | None = None
    #: Shell lines the batch script runs before the job (``module load cuda/12.4``).
    setup: tuple[str, ...] = ()
    #: Options of the step that starts the job's processes (``--container-image=IMG``).
    srun_opts: tuple[str, ...] = ()


@frozen
class ClusterState(JsonRecord):
    """A run as a cluster's scheduler sees it, in its own words, kept as data. ``verdict`` is
    what that means for the run (the backend maps its states): QUEUED, RUNNING or PAUSED
    (suspended) while the scheduler has it, else how it ended (SUCCEEDED, FAILED, STOPPED, LOST).
    """

    scheduler: str
    job_id: str
    #: The scheduler's own state word (PENDING, RUNNING, TIMEOUT, NODE_FAIL, ...).
    state: str
    verdict: JobState
    #: Its own reason (Resources, Priority, JobHeldUser, NonZeroExitCode, ...).
    reason: str | None = None
    nodes: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    #: How many times the scheduler requeued the job.
    restarts: int = 0
    #: Ended unstarted by the scheduler: a job it was to start after did not succeed.
    dependency_failed: bool = field(default=False, metadata=OMIT_DEFAULT)
    #: The scheduler holds it: queued, it never starts until released (the backend says so).
    held: bool = field(default=False, metadata=OMIT_DEFAULT)


@frozen
class JobSpec(JsonRecord):
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
    #: ``--env`` variables: one value per name, sorted by name, as ``--env`` gives them.
    env: tuple[tuple[str, str], ...] = field(default=(), metadata=AS_OBJECT)
    wait: bool = False
    force: bool = False
    policy: GpuPolicy = field(default_factory=GpuPolicy)
    #: ``script`` is a command run as it is (``--exec``: a shell script, ``accelerate``, ...).
    executable: bool = False
    #: The group (a sweep's, or ``--group``) for list, stop, wait and per-group limits.
    group: str | None = None
    #: Jobs this one starts after; with ``after_any``, whatever their outcome.
    after: tuple[str, ...] = ()
    after_any: bool = False
    #: Higher goes first in the queue; FIFO among equals.
    priority: int = 0
    #: A command run (without a shell) when the job ends, with its outcome in the environment.
    on_exit: tuple[str, ...] = ()
    #: torchrun's elastic restarts (``--max-restarts``); None: torchrun's default.
    max_restarts: int | None = None
    #: A sweep's values for this job, in grid order: ``(("lr", "1e-3"), ("bs", "32"))``.
    params: tuple[tuple[str, str], ...] = field(default=(), metadata=AS_OBJECT)
    #: One node of a job on several machines (``--nnodes``); None on one machine.
    rdzv: Rendezvous | None = None
    #: A cluster scheduler's own options (the registry's key since the first release), or None.
    slurm: BatchSpec | None = None
    #: Limits on this machine (``--time``, ``--mem``, ``--signal-before``): s, bytes, s.
    time_limit: int | None = field(default=None, metadata=OMIT_DEFAULT)
    mem_limit: int | None = field(default=None, metadata=OMIT_DEFAULT)
    signal_before: int | None = field(default=None, metadata=OMIT_DEFAULT)

    def __post_init__(self) -> None:
        # Both are mappings kept as pairs and saved as JSON objects: hold them as a save would
        # give them back (one value per key, the last; env sorted), so that a spec is equal
        # to itself loaded again.
        object.__setattr__(self, "env", tuple(sorted(dict(self.env).items())))
        object.__setattr__(self, "params", tuple(dict(self.params).items()))

    @property
    def procs(self) -> int:
        """Processes per run (per node): ``--nproc``, else one per GPU, else one."""
        if self.nproc is not None:
            return self.nproc
        if self.executable:
            return 1  # a command launches its own processes
        if self.slurm is not None and self.slurm.gpus_per_node:
            return self.slurm.gpus_per_node
        if self.gpus:
            return len(self.gpus)
        if self.ngpus:
            return self.ngpus
        return 1

    @property
    def nnodes(self) -> int:
        """Machines a run spans: the batch scheduler's nodes, or the nodes started by hand."""
        if self.slurm is not None:
            return self.slurm.nodes
        return self.rdzv.nnodes if self.rdzv is not None else 1

    @property
    def world_size(self) -> int:
        """Processes of a run on all its nodes: its ranks are 0 to this less one."""
        return self.procs * self.nnodes

    @property
    def books_gpus(self) -> bool:
        """True when the job asked for GPUs (by number or by count) and so books them."""
        return self.gpus is not None or self.ngpus is not None

    @property
    def command(self) -> str:
        """The command as the user would read it: ``train.py --lr 3e-4`` or ``-m pkg.train``."""
        script = self.script
        if not self.module and script.startswith(self.cwd.rstrip("/") + "/"):
            script = script[len(self.cwd.rstrip("/")) + 1 :]  # as typed, relative to cwd
        head = ["-m", script] if self.module else [script]
        return shlex.join([*head, *self.args])

    @property
    def kind(self) -> str:
        """``python``, ``module`` or ``exec``: how the job's command is started."""
        return "exec" if self.executable else "module" if self.module else "python"


@frozen
class ProcId(JsonRecord):
    """A process as identity, not just a number: its pid and its start time since boot.

    ``start`` is field 22 of ``/proc/PID/stat`` (clock ticks after boot); a pid that was reused
    by another process has another start time. None when unknown (records of the first release).
    """

    pid: int
    start: int | None = None


@frozen
class GpuUse(JsonRecord):
    """What a run used of one GPU, sampled through the driver by the run's pids."""

    index: int
    #: The most memory the run's processes held on it at one look, summed over them.
    peak_memory_mib: int
    #: The GPU's utilisation averaged over the looks that found the run on it (None: unknown).
    mean_utilization_pct: float | None = None
    #: How many looks found the run on it.
    samples: int = 0


@frozen
class NodeCost(JsonRecord):
    """One node's share of a run that spans several nodes, as that node measured it."""

    node: str
    cpu_time_s: float = 0.0
    peak_rss_bytes: int = 0
    max_rss_bytes: int = 0
    #: The node's own GPUs (their indices are the node's: another node has a GPU 0 too).
    gpus: tuple[GpuUse, ...] = ()


@frozen
class Cost(JsonRecord):
    """What a run cost, as its runner measured it (what a scheduler's accounting reports)."""

    #: CPU time (user + system) of every process of the run (the sampler rounds it to the ms).
    cpu_time_s: float = 0.0
    #: The most memory (RSS) the run's processes held together at one look.
    peak_rss_bytes: int = 0
    #: The largest peak RSS of any one process of the run (a scheduler's MaxRSS).
    max_rss_bytes: int = 0
    gpus: tuple[GpuUse, ...] = ()
    #: The highest TORCHELASTIC_RESTART_COUNT seen: how often torchrun restarted the workers.
    restarts: int = 0
    #: How many looks the runner took, and how far apart (seconds).
    samples: int = 0
    interval_s: float = 0.0
    #: Each node's share, where the run's processes spanned several nodes (the totals above
    #: add them up); empty for a run on one machine.
    nodes: tuple[NodeCost, ...] = field(default=(), metadata=OMIT_DEFAULT)


@frozen
class Outcome(JsonRecord):
    """How a run's command ended, as its runner saw it: exit code or signal, and the rest."""

    exit_code: int | None
    signal: int | None
    ended_at: str
    #: Processes of the run the runner had to end after the main one exited.
    leftovers: int = 0
    #: Why writing the log failed (disk full, ...), when it did; the job ran on regardless.
    log_error: str | None = None
    #: The cluster's scheduler told the job to end (cancel, time limit, preemption, requeue):
    #: which of these it was is the scheduler's to say, so the run waits for its view.
    by_scheduler: bool = False
    #: What the run used, as its runner sampled it.
    cost: Cost | None = None
    #: A limit of the run's that ended it (time, memory): the run failed for that reason.
    reason: Reason | None = field(default=None, metadata=OMIT_DEFAULT)


@frozen
class GpuBaseline(JsonRecord):
    """One booked GPU as it was when the run got it: what ``stop`` expects to return to."""

    gpu: int
    memory_used_mib: int
    pids: tuple[int, ...] = ()


@mutable
class Run(JsonRecord):
    """One run of a job: created by ``start`` or ``restart``; its transitions are in lifecycle."""

    # ``pids`` is written for readers of the file (and the first release's), never read back.
    json_layout = Layout(
        order=(
            *("run", "run_id", "state", "created_at", "started_at", "ended_at", "exit_code"),
            *("signal", "gpus", "nproc", "rendezvous", "backend", "handle", "boot_id"),
            *("runner", "main", "pids"),
        ),
        derived={"pids": "pids"},
    )

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
    #: Which backend runs it ("tmux"), and that backend's handle (session name and id, ...).
    backend: str = "tmux"
    handle: dict[str, str] = field(default_factory=dict)
    #: ``/proc/sys/kernel/random/boot_id`` when the run was launched: pids mean nothing after it.
    boot_id: str | None = None
    runner: ProcId | None = None
    main: ProcId | None = None
    stop_requested: bool = False
    #: Held by the user (``hold``, ``start --hold``): it stays queued, out of the queue's
    #: order, until ``release``.
    held: bool = field(default=False, metadata=OMIT_DEFAULT)
    wait: Wait | None = None
    reason: Reason | None = None
    log_error: str | None = None
    leftovers: int = 0
    #: The cluster scheduler's last word on the run (its job id, state, reason, nodes).
    cluster: ClusterState | None = None
    #: The booked GPUs as they were when booked (memory, processes), for the check after stop.
    baseline: tuple[GpuBaseline, ...] = ()
    #: How the run's processes are found: "cgroup v2", "cgroup v1" or "marker" (the runner's).
    containment: str | None = field(default=None, metadata=OMIT_DEFAULT)
    #: The runs this one waits for (``--after``), bound by run id when it was queued: a job of
    #: the same name started later (after ``rm``) is another job, never the one waited for.
    after_runs: dict[str, str] = field(default_factory=dict, metadata=OMIT_DEFAULT)
    cost: Cost | None = None

    @property
    def pids(self) -> dict[str, int]:
        """``{"runner": pid, "main": pid}`` for what is known."""
        out = {}
        if self.runner is not None:
            out["runner"] = self.runner.pid
        if self.main is not None:
            out["main"] = self.main.pid
        return out


@mutable
class JobRecord(JsonRecord):
    """Everything handyjobs knows about one job; the last of ``runs`` is the current run.

    Its JSON has the current run's fields flat at the top, for readers (``list --json``, the
    first release), and the history under ``runs``; only ``runs`` is read back. ``name`` comes
    first and ``state`` second: the registry's fast reader relies on it.
    """

    json_layout = Layout(
        order=(
            *("name", "state", "command", "gpus", "nproc", "wait", "reason", "created_at"),
            *("started_at", "ended_at", "exit_code", "signal", "backend", "session"),
            *("log_path", "log_error", "cost", "git"),
        ),
        derived={
            "state": "state",
            "command": "spec.command",
            "session": "json_session",
            **{
                key: f"current.{key}"
                for key in (
                    *("gpus", "nproc", "wait", "reason", "started_at", "ended_at"),
                    *("exit_code", "signal", "backend", "log_error", "cost"),
                )
            },
        },
    )

    name: str
    spec: JobSpec
    log_path: str
    created_at: str
    runs: list[Run]
    git: dict[str, Any] | None = None

    @property
    def current(self) -> Run:
        """The newest run."""
        return self.runs[-1]

    @property
    def json_session(self) -> str:
        """The JSON's ``session`` key, kept for readers of the first release: the session in the
        current run's handle (as data; only the tmux backend reads handles), else the name."""
        return self.current.handle.get("session", self.name)

    @property
    def state(self) -> JobState:
        """The state of the newest run."""
        return self.current.state

    def run_by_id(self, run_id: str) -> Run | None:
        """The run with this id, current or past."""
        for run in reversed(self.runs):
            if run.run_id == run_id:
                return run
        return None

    def duration_s(self, now: datetime | None = None) -> float | None:
        """Seconds the current run has run (so far, while it runs)."""
        run = self.current
        if run.started_at is None:
            return None
        end = parse_time(run.ended_at) if run.ended_at else (now or datetime.now(timezone.utc))
        return max(0.0, (end - parse_time(run.started_at)).total_seconds())

    def with_run(self, run: Run) -> JobRecord:
        """A copy with ``run`` appended as the new current run."""
        return replace(self, runs=[*self.runs, run])


def _first_release_status(d: dict[str, Any]) -> dict[str, Any]:
    """A status file of the first release (flat: pids, ended_at, exit code) in today's layout."""
    if "schema_version" in d:
        return d
    pids = d.get("pids") or {}
    outcome = None
    if d.get("ended_at"):
        outcome = {key: d.get(key) for key in ("exit_code", "signal", "ended_at")}
    kept = ("run_id", "started_at", "gpus", "rendezvous")
    return {
        **{key: d[key] for key in kept if key in d},
        "schema_version": 1,
        "runner": {"pid": pids.get("runner", 0)},
        "main": {"pid": pids["main"]} if pids.get("main") else None,
        "outcome": outcome,
    }


@mutable
class RunStatus(JsonRecord):
    """The file a run's runner writes (``jobs/NAME/run-RUNID.json``): the job side's truth.

    The runner reserves room for it when the run starts, so a full disk cannot cost the
    outcome; readers fold it into the registry through the lifecycle.
    """

    json_layout = Layout(order=("schema_version",), upgrade=_first_release_status)

    run_id: str
    runner: ProcId
    boot_id: str | None = None
    main: ProcId | None = None
    started_at: str | None = None
    gpus: tuple[int, ...] | None = None
    rendezvous: str | None = None
    outcome: Outcome | None = None
    #: Set by a runner that ended the job because its terminal went away.
    lost: Reason | None = None
    #: Set by a runner that had the cluster requeue its job (it starts again, same run).
    requeued: bool = False
    #: How the run's processes are found: "cgroup v2", "cgroup v1" or "marker".
    containment: str | None = field(default=None, metadata=OMIT_DEFAULT)
    #: Which start of the run wrote it: the scheduler's restart count when it started (a run
    #: the cluster requeued starts again, same run; an earlier start's file is stale then).
    attempt: int = field(default=0, metadata=OMIT_DEFAULT)
    schema_version: int = SCHEMA_VERSION


@frozen
class LaunchEnv(JsonRecord):
    """The caller's environment for a job (``jobs/NAME/env.json``, 0600), kept for restarts."""

    json_layout = Layout(order=("schema_version",))

    name: str
    env: dict[str, str]
    schema_version: int = SCHEMA_VERSION


def exit_summary(run: Run) -> str:
    """How a run ended, in words: ``0``, ``1``, ``SIGTERM``, ``TIMEOUT``, ``stopped`` (however
    its command took the stop); empty while it runs."""
    limit = run.reason.kind if run.reason is not None else None
    if limit in (LostKind.TIME_LIMIT, LostKind.OUT_OF_MEMORY):  # ended by a limit
        return "TIMEOUT" if limit is LostKind.TIME_LIMIT else "OOM"
    if run.state is JobState.STOPPED and run.stop_requested:
        return "stopped"  # died of the SIGTERM, torchrun's 1 or a shell's 143: one word for all
    if run.signal is not None:
        import signal as _signal  # lazy: only a run killed by a signal needs it (start-up of list)

        names = {sig.value: sig.name for sig in _signal.Signals}
        return names.get(run.signal, f"signal {run.signal}")
    return str(run.exit_code) if run.exit_code is not None else ""


def returncode(run: Run) -> int:
    """The shell-style code of a finished run: exit code, or 128 + signal; 1 when unknown,
    and 1 for a run that failed or was lost though its command exited 0 (a time limit)."""
    if run.signal is not None:
        return 128 + run.signal
    if run.exit_code is not None and (run.exit_code or run.state.value not in ("failed", "lost")):
        return run.exit_code
    return 1
