"""Job states, specs, runs, outcomes and reasons as typed data, with their JSON form.

Everything the registry, the runner's status file and the launch file hold is one of these
dataclasses, written by hand-made ``to_dict`` / ``from_dict`` with a schema version. Reasons
(why a run waits, why it was lost) are data here;
:mod:`handyjobs.views.render` turns them into words.
"""

from __future__ import annotations

import enum
import re
import shlex
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

#: Bumped whenever a JSON layout changes; older files are migrated on load (see registry.py).
SCHEMA_VERSION = 2

#: Names of new jobs: they start with a letter or digit, so that no printed hint such as
#: ``handyjobs stop NAME`` can be read as an option.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: Names the first release accepted; records that carry one still load and can be addressed.
LEGACY_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class JobState(str, enum.Enum):
    """Where a run is in its life; the last four are end states."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    LOST = "lost"

    @property
    def active(self) -> bool:
        """True while the run waits for GPUs or runs."""
        return self in (JobState.QUEUED, JobState.RUNNING)


class LostKind(str, enum.Enum):
    """Why a run ended with no outcome of its own, or failed before its command started."""

    #: The runner process is gone and wrote no outcome (SIGKILL, OOM killer).
    RUNNER_DIED = "runner_died"
    #: The runner's terminal went away (tmux session or server killed); it ended the job.
    SESSION_GONE = "session_gone"
    #: The machine rebooted since the run started.
    REBOOT = "reboot"
    #: The runner stopped on an unexpected error of its own.
    RUNNER_ERROR = "runner_error"
    #: The run could not be started (its session, its environment file, the command).
    START_FAILED = "start_failed"
    #: A cluster scheduler ended it and the job side recorded nothing (node failure, or the
    #: scheduler no longer knows the job); ``detail`` holds the scheduler's state.
    CLUSTER_ENDED = "cluster_ended"
    #: A job it was to start after (``--after``) failed, was stopped, lost or removed.
    DEPENDENCY_FAILED = "dependency_failed"


@dataclass(frozen=True)
class Reason:
    """Why a run was lost or failed to start: a kind, and data (never a sentence) about it."""

    kind: LostKind
    #: An error as the system gave it ("OSError: [Errno 28] ..."), a signal's name, or the
    #: state of the job named in ``job`` ("failed", or "gone").
    detail: str | None = None
    #: Processes of the run still alive when it was declared lost.
    pids: tuple[int, ...] = ()
    #: The other job involved (a dependency that failed).
    job: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "kind": self.kind.value,
            "detail": self.detail,
            "pids": list(self.pids),
            "job": self.job,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reason:
        """Inverse of :meth:`to_dict`."""
        pids = tuple(int(p) for p in d.get("pids", ()))
        return cls(LostKind(d["kind"]), d.get("detail"), pids, d.get("job"))


class BlockKind(str, enum.Enum):
    """What keeps one GPU from a queued run."""

    HELD = "held"  # a running job of ours holds it (job)
    WANTED = "wanted"  # a job queued earlier keeps it (job)
    PROCESSES = "processes"  # compute processes run on it (processes)
    MEMORY = "memory"  # memory in use above the threshold (used_mib, threshold_mib)
    MIG = "mig"  # MIG mode is on: a plain index cannot address an instance
    UNREADABLE = "unreadable"  # discovery could not read it (detail)
    MISSING = "missing"  # it is not there (any more)


@dataclass(frozen=True)
class GpuUser:
    """A process seen on a GPU, as discovery reported it (user only when /proc vouches)."""

    pid: int
    user: str | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"pid": self.pid, "user": self.user, "name": self.name}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GpuUser:
        """Inverse of :meth:`to_dict`."""
        return cls(int(d["pid"]), d.get("user"), d.get("name"))


@dataclass(frozen=True)
class Blocker:
    """Why one GPU is not free for a run."""

    gpu: int
    kind: BlockKind
    job: str | None = None
    processes: tuple[GpuUser, ...] = ()
    used_mib: int | None = None
    threshold_mib: int | None = None
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (empty fields left out)."""
        d: dict[str, Any] = {"gpu": self.gpu, "kind": self.kind.value}
        if self.job is not None:
            d["job"] = self.job
        if self.processes:
            d["processes"] = [p.to_dict() for p in self.processes]
        for key in ("used_mib", "threshold_mib", "detail"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Blocker:
        """Inverse of :meth:`to_dict`."""
        return cls(
            gpu=int(d["gpu"]),
            kind=BlockKind(d["kind"]),
            job=d.get("job"),
            processes=tuple(GpuUser.from_dict(p) for p in d.get("processes", ())),
            used_mib=d.get("used_mib"),
            threshold_mib=d.get("threshold_mib"),
            detail=d.get("detail"),
        )


@dataclass(frozen=True)
class Wait:
    """Why a queued run cannot start yet: how many GPUs it needs, how many are free, blockers."""

    needed: int
    free: int
    blockers: tuple[Blocker, ...] = ()
    #: True when the run asked for a count (``--ngpus``), not for GPUs by number.
    by_count: bool = False
    #: Queue position, 1 for the first queued run.
    position: int | None = None
    #: When a cluster scheduler queues the run rather than handyjobs: its name ("slurm") and
    #: its own reason, as it gives it (Slurm's squeue reason: Resources, Priority, ...).
    scheduler: str | None = None
    reason: str | None = None
    #: Jobs it starts after (``--after``) that have not ended yet.
    after: tuple[str, ...] = ()
    #: A parallel limit that is reached: how many may run, how many do, and whose limit
    #: (a group's, or None for the machine-wide one).
    limit: int | None = None
    running: int | None = None
    group: str | None = None

    @property
    def for_gpus(self) -> bool:
        """True when the run waits for GPUs (not only for dependencies or a free slot)."""
        return self.needed > 0 and not self.after and self.limit is None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        d: dict[str, Any] = {
            "needed": self.needed,
            "free": self.free,
            "by_count": self.by_count,
            "position": self.position,
            "blockers": [b.to_dict() for b in self.blockers],
            "after": list(self.after),
            "limit": self.limit,
            "running": self.running,
            "group": self.group,
        }
        if self.scheduler is not None:
            d["scheduler"], d["reason"] = self.scheduler, self.reason
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Wait:
        """Inverse of :meth:`to_dict`."""
        return cls(
            needed=int(d.get("needed", 0)),
            free=int(d.get("free", 0)),
            blockers=tuple(Blocker.from_dict(b) for b in d.get("blockers", ())),
            by_count=bool(d.get("by_count", False)),
            position=d.get("position"),
            scheduler=d.get("scheduler"),
            reason=d.get("reason"),
            after=tuple(d.get("after", ())),
            limit=d.get("limit"),
            running=d.get("running"),
            group=d.get("group"),
        )


def utcnow() -> str:
    """The current time as ISO-8601 UTC with milliseconds, e.g. ``2026-11-24T23:08:55.123Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """Parse a timestamp written by :func:`utcnow` (Python 3.10 lacks the ``Z`` suffix)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class GpuPolicy:
    """The GPU settings a job was started under: the GPUs it may use, the busy threshold."""

    allowed: tuple[int, ...] | None = None
    threshold_mib: int = 1024

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "allowed": None if self.allowed is None else list(self.allowed),
            "threshold_mib": self.threshold_mib,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> GpuPolicy:
        """Inverse of :meth:`to_dict`; None gives the defaults."""
        if not d:
            return cls()
        allowed = d.get("allowed")
        return cls(
            None if allowed is None else tuple(int(g) for g in allowed),
            int(d.get("threshold_mib", 1024)),
        )


@dataclass(frozen=True)
class Rendezvous:
    """One node's part of a job on several machines: torchrun's c10d rendezvous, as started."""

    nnodes: int
    #: 0 on the node that hosts the rendezvous store; torchrun itself orders the nodes' ranks.
    node_rank: int
    #: ``HOST:PORT`` of the store, on the node of rank 0.
    endpoint: str
    #: Shared by every node of the job; made up by the start on node 0.
    rdzv_id: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "nnodes": self.nnodes,
            "node_rank": self.node_rank,
            "endpoint": self.endpoint,
            "rdzv_id": self.rdzv_id,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Rendezvous | None:
        """Inverse of :meth:`to_dict` (None for a job on one machine)."""
        if not d:
            return None
        return cls(int(d["nnodes"]), int(d["node_rank"]), str(d["endpoint"]), str(d["rdzv_id"]))


@dataclass(frozen=True)
class SlurmSpec:
    """What a job asks of Slurm: ``sbatch`` options, named as sbatch names them."""

    nodes: int = 1
    gpus_per_node: int | None = None
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    mem: str | None = None
    constraint: str | None = None
    #: More sbatch options, each one ``--opt=value`` as the user gave it.
    extra: tuple[str, ...] = ()
    #: Requeue after the time-limit warning (and let Slurm requeue on preemption, node failure).
    requeue: bool = False
    #: Seconds before the time limit at which the batch script gets SIGUSR1.
    signal_before_s: int = 60

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "nodes": self.nodes,
            "gpus_per_node": self.gpus_per_node,
            "partition": self.partition,
            "time": self.time,
            "account": self.account,
            "mem": self.mem,
            "constraint": self.constraint,
            "extra": list(self.extra),
            "requeue": self.requeue,
            "signal_before_s": self.signal_before_s,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SlurmSpec | None:
        """Inverse of :meth:`to_dict`."""
        if not d:
            return None
        return cls(
            nodes=int(d.get("nodes", 1)),
            gpus_per_node=d.get("gpus_per_node"),
            partition=d.get("partition"),
            time=d.get("time"),
            account=d.get("account"),
            mem=d.get("mem"),
            constraint=d.get("constraint"),
            extra=tuple(d.get("extra") or ()),
            requeue=bool(d.get("requeue", False)),
            signal_before_s=int(d.get("signal_before_s", 60)),
        )


@dataclass(frozen=True)
class ClusterState:
    """A run as a cluster's scheduler sees it, in the scheduler's own words, kept as data.

    ``verdict`` is what that means for the run (the backend maps its states): QUEUED or
    RUNNING while the scheduler has it, else how it ended (SUCCEEDED, FAILED, STOPPED, LOST).
    """

    scheduler: str
    job_id: str
    #: The scheduler's state word (Slurm: PENDING, RUNNING, TIMEOUT, NODE_FAIL, ...).
    state: str
    verdict: JobState
    #: Its reason (Slurm: Resources, Priority, JobHeldUser, NonZeroExitCode, ...).
    reason: str | None = None
    nodes: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    #: How many times the scheduler requeued the job.
    restarts: int = 0
    #: The scheduler ended the job, never started, because a job it was to start after did
    #: not succeed (the backend says so from its own reason words).
    dependency_failed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "scheduler": self.scheduler,
            "job_id": self.job_id,
            "state": self.state,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "nodes": self.nodes,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "restarts": self.restarts,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ClusterState | None:
        """Inverse of :meth:`to_dict`."""
        if not d:
            return None
        return cls(
            scheduler=str(d["scheduler"]),
            job_id=str(d["job_id"]),
            state=str(d["state"]),
            verdict=JobState(d["verdict"]),
            reason=d.get("reason"),
            nodes=d.get("nodes"),
            exit_code=d.get("exit_code"),
            signal=d.get("signal"),
            restarts=int(d.get("restarts", 0)),
        )


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
    policy: GpuPolicy = field(default_factory=GpuPolicy)
    #: Submitted to Slurm (``--slurm``) rather than run in tmux here.
    slurm: SlurmSpec | None = None
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
    params: tuple[tuple[str, str], ...] = ()
    #: One node of a job on several machines (``--nnodes``); None on one machine.
    rdzv: Rendezvous | None = None

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
            "policy": self.policy.to_dict(),
            "executable": self.executable,
            "group": self.group,
            "after": list(self.after),
            "after_any": self.after_any,
            "priority": self.priority,
            "on_exit": list(self.on_exit),
            "max_restarts": self.max_restarts,
            "params": dict(self.params),
            "rdzv": None if self.rdzv is None else self.rdzv.to_dict(),
            "slurm": None if self.slurm is None else self.slurm.to_dict(),
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
            policy=GpuPolicy.from_dict(d.get("policy")),
            executable=bool(d.get("executable", False)),
            group=d.get("group"),
            after=tuple(d.get("after") or ()),
            after_any=bool(d.get("after_any", False)),
            priority=int(d.get("priority", 0)),
            on_exit=tuple(d.get("on_exit") or ()),
            max_restarts=d.get("max_restarts"),
            # dicts keep their order in JSON, so the grid order survives the round trip
            params=tuple((str(k), str(v)) for k, v in dict(d.get("params") or {}).items()),
            rdzv=Rendezvous.from_dict(d.get("rdzv")),
            slurm=SlurmSpec.from_dict(d.get("slurm")),
        )


@dataclass(frozen=True)
class ProcId:
    """A process as identity, not just a number: its pid and its start time since boot.

    ``start`` is field 22 of ``/proc/PID/stat`` (clock ticks after boot); a pid that was reused
    by another process has another start time. None when unknown (records of the first release).
    """

    pid: int
    start: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"pid": self.pid, "start": self.start}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ProcId | None:
        """Inverse of :meth:`to_dict`."""
        if not d:
            return None
        start = d.get("start")
        return cls(int(d["pid"]), None if start is None else int(start))


@dataclass(frozen=True)
class GpuUse:
    """What a run used of one GPU, sampled through the driver by the run's pids."""

    index: int
    #: The most memory the run's processes held on it at one look, summed over them.
    peak_memory_mib: int
    #: The GPU's utilisation averaged over the looks that found the run on it (None: unknown).
    mean_utilization_pct: float | None = None
    #: How many looks found the run on it.
    samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "index": self.index,
            "peak_memory_mib": self.peak_memory_mib,
            "mean_utilization_pct": self.mean_utilization_pct,
            "samples": self.samples,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GpuUse:
        """Inverse of :meth:`to_dict`."""
        util = d.get("mean_utilization_pct")
        return cls(
            int(d["index"]),
            int(d.get("peak_memory_mib", 0)),
            None if util is None else float(util),
            int(d.get("samples", 0)),
        )


@dataclass(frozen=True)
class Cost:
    """What a run cost, as its runner measured it (Slurm's sacct MaxRSS and TRES usage)."""

    #: CPU time (user + system) of every process of the run.
    cpu_time_s: float = 0.0
    #: The most memory (RSS) the run's processes held together at one look.
    peak_rss_bytes: int = 0
    #: The largest peak RSS of any one process of the run (Slurm's MaxRSS).
    max_rss_bytes: int = 0
    gpus: tuple[GpuUse, ...] = ()
    #: The highest TORCHELASTIC_RESTART_COUNT seen: how often torchrun restarted the workers.
    restarts: int = 0
    #: How many looks the runner took, and how far apart (seconds).
    samples: int = 0
    interval_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "cpu_time_s": round(self.cpu_time_s, 3),
            "peak_rss_bytes": self.peak_rss_bytes,
            "max_rss_bytes": self.max_rss_bytes,
            "gpus": [g.to_dict() for g in self.gpus],
            "restarts": self.restarts,
            "samples": self.samples,
            "interval_s": self.interval_s,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Cost | None:
        """Inverse of :meth:`to_dict`."""
        if not d:
            return None
        return cls(
            cpu_time_s=float(d.get("cpu_time_s", 0.0)),
            peak_rss_bytes=int(d.get("peak_rss_bytes", 0)),
            max_rss_bytes=int(d.get("max_rss_bytes", 0)),
            gpus=tuple(GpuUse.from_dict(g) for g in d.get("gpus") or ()),
            restarts=int(d.get("restarts", 0)),
            samples=int(d.get("samples", 0)),
            interval_s=float(d.get("interval_s", 0.0)),
        )


@dataclass(frozen=True)
class Outcome:
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

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "exit_code": self.exit_code,
            "signal": self.signal,
            "ended_at": self.ended_at,
            "leftovers": self.leftovers,
            "log_error": self.log_error,
            "by_scheduler": self.by_scheduler,
            "cost": None if self.cost is None else self.cost.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Outcome | None:
        """Inverse of :meth:`to_dict`."""
        if not d:
            return None
        return cls(
            d.get("exit_code"),
            d.get("signal"),
            d["ended_at"],
            int(d.get("leftovers", 0)),
            d.get("log_error"),
            bool(d.get("by_scheduler", False)),
            Cost.from_dict(d.get("cost")),
        )


@dataclass(frozen=True)
class GpuBaseline:
    """One booked GPU as it was when the run got it: what ``stop`` expects to return to."""

    gpu: int
    memory_used_mib: int
    pids: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"gpu": self.gpu, "memory_used_mib": self.memory_used_mib, "pids": list(self.pids)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GpuBaseline:
        """Inverse of :meth:`to_dict`."""
        return cls(int(d["gpu"]), int(d["memory_used_mib"]), tuple(int(p) for p in d["pids"]))


@dataclass
class Run:
    """One run of a job: created by ``start`` or ``restart``; its transitions are in lifecycle."""

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
    wait: Wait | None = None
    reason: Reason | None = None
    log_error: str | None = None
    leftovers: int = 0
    #: The cluster scheduler's last word on the run (Slurm's job id, state, reason, nodes).
    cluster: ClusterState | None = None
    #: The booked GPUs as they were when booked (memory, processes), for the check after stop.
    baseline: tuple[GpuBaseline, ...] = ()
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
            "backend": self.backend,
            "handle": dict(self.handle),
            "boot_id": self.boot_id,
            "runner": None if self.runner is None else self.runner.to_dict(),
            "main": None if self.main is None else self.main.to_dict(),
            "pids": self.pids,
            "stop_requested": self.stop_requested,
            "wait": None if self.wait is None else self.wait.to_dict(),
            "reason": None if self.reason is None else self.reason.to_dict(),
            "log_error": self.log_error,
            "leftovers": self.leftovers,
            "cluster": None if self.cluster is None else self.cluster.to_dict(),
            "baseline": [b.to_dict() for b in self.baseline],
            "cost": None if self.cost is None else self.cost.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Run:
        """Inverse of :meth:`to_dict`."""
        wait, reason = d.get("wait"), d.get("reason")
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
            backend=str(d.get("backend", "tmux")),
            handle={str(k): str(v) for k, v in (d.get("handle") or {}).items()},
            boot_id=d.get("boot_id"),
            runner=ProcId.from_dict(d.get("runner")),
            main=ProcId.from_dict(d.get("main")),
            stop_requested=bool(d.get("stop_requested", False)),
            wait=None if not wait else Wait.from_dict(wait),
            reason=None if not reason else Reason.from_dict(reason),
            log_error=d.get("log_error"),
            leftovers=int(d.get("leftovers", 0)),
            cluster=ClusterState.from_dict(d.get("cluster")),
            baseline=tuple(GpuBaseline.from_dict(b) for b in d.get("baseline") or ()),
            cost=Cost.from_dict(d.get("cost")),
        )


@dataclass
class JobRecord:
    """Everything handyjobs knows about one job; the last of ``runs`` is the current run."""

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
    def state(self) -> JobState:
        """The state of the newest run."""
        return self.current.state

    @property
    def session(self) -> str:
        """The tmux session of the current run (the job's name unless that was taken)."""
        return self.current.handle.get("session", self.name)

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
            "wait": None if run.wait is None else run.wait.to_dict(),
            "reason": None if run.reason is None else run.reason.to_dict(),
            "created_at": self.created_at,
            "started_at": run.started_at,
            "ended_at": run.ended_at,
            "exit_code": run.exit_code,
            "signal": run.signal,
            "backend": run.backend,
            "session": self.session,
            "log_path": self.log_path,
            "log_error": run.log_error,
            "cost": None if run.cost is None else run.cost.to_dict(),
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
            log_path=d["log_path"],
            created_at=d["created_at"],
            runs=[Run.from_dict(r) for r in d["runs"]],
            git=d.get("git"),
        )

    def with_run(self, run: Run) -> JobRecord:
        """A copy with ``run`` appended as the new current run."""
        return replace(self, runs=[*self.runs, run])


@dataclass
class RunStatus:
    """The file a run's runner writes (``jobs/NAME/run-RUNID.json``): the job side's truth.

    The runner reserves room for it when the run starts, so a full disk cannot cost the
    outcome; readers fold it into the registry through the lifecycle.
    """

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
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "schema_version": self.schema_version,
            "run_id": self.run_id,
            "runner": self.runner.to_dict(),
            "boot_id": self.boot_id,
            "main": None if self.main is None else self.main.to_dict(),
            "started_at": self.started_at,
            "gpus": None if self.gpus is None else list(self.gpus),
            "rendezvous": self.rendezvous,
            "outcome": None if self.outcome is None else self.outcome.to_dict(),
            "lost": None if self.lost is None else self.lost.to_dict(),
            "requeued": self.requeued,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunStatus:
        """Inverse of :meth:`to_dict`; also reads the first release's flat layout."""
        if "schema_version" not in d:  # first release: {"run_id", "pids", "ended_at", ...}
            pids = d.get("pids") or {}
            outcome = None
            if d.get("ended_at"):
                outcome = Outcome(d.get("exit_code"), d.get("signal"), d["ended_at"])
            return cls(
                run_id=str(d["run_id"]),
                runner=ProcId(int(pids.get("runner", 0))),
                main=ProcId(int(pids["main"])) if pids.get("main") else None,
                started_at=d.get("started_at"),
                gpus=None if d.get("gpus") is None else tuple(d["gpus"]),
                rendezvous=d.get("rendezvous"),
                outcome=outcome,
                schema_version=1,
            )
        gpus, lost = d.get("gpus"), d.get("lost")
        runner = ProcId.from_dict(d["runner"])
        assert runner is not None
        return cls(
            run_id=str(d["run_id"]),
            runner=runner,
            boot_id=d.get("boot_id"),
            main=ProcId.from_dict(d.get("main")),
            started_at=d.get("started_at"),
            gpus=None if gpus is None else tuple(int(g) for g in gpus),
            rendezvous=d.get("rendezvous"),
            outcome=Outcome.from_dict(d.get("outcome")),
            lost=None if not lost else Reason.from_dict(lost),
            requeued=bool(d.get("requeued", False)),
            schema_version=int(d["schema_version"]),
        )


@dataclass(frozen=True)
class LaunchEnv:
    """The caller's environment for a job (``jobs/NAME/env.json``, 0600), kept for restarts."""

    name: str
    env: dict[str, str]
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"schema_version": self.schema_version, "name": self.name, "env": dict(self.env)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LaunchEnv:
        """Inverse of :meth:`to_dict`."""
        env = d["env"]
        if not isinstance(env, dict):
            raise ValueError("env is not an object")
        return cls(str(d["name"]), {str(k): str(v) for k, v in env.items()})


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
