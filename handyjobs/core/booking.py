"""Who may take which GPU: the machine's policy, what is busy, free choice and the queue.

:mod:`handyjobs.gpus.discovery` only discovers; every judgement about a GPU lives here, as data
(:class:`~handyjobs.core.records.Blocker`, :class:`~handyjobs.core.records.Wait`) that
:mod:`handyjobs.views.render` puts into words.
Callers that book hold the registry lock, so a choice
and its reservation are one step: two jobs never book the same GPU. Nothing here discovers or
touches the disk: every function takes the records and a discovery it is given.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from handyjobs.core.records import (
    Blocker,
    BlockKind,
    GpuPolicy,
    GpuUser,
    JobRecord,
    JobSpec,
    JobState,
    Run,
    Wait,
)
from handyjobs.core.states import OWN_QUEUE as OWN_QUEUE
from handyjobs.errors import GpuBusy, JobStateError, UsageError
from handyjobs.gpus.model import Discovery, GpuInfo
from handyjobs.gpus.select import parse_gpu_spec
from handyjobs.structs import field, frozen, replace

ALLOWED_ENV = "HANDYJOBS_GPUS"
THRESHOLD_ENV = "HANDYJOBS_GPU_MEM_THRESHOLD_MIB"
DEFAULT_THRESHOLD_MIB = 1024

_INDEX_RE = re.compile(r"[0-9]+")
#: States whose runs hold their GPUs and a slot: a paused run keeps both until it ends.
HOLDING = (JobState.RUNNING, JobState.PAUSED)


# ---- the machine's policy ---------------------------------------------------------------------


def allowed_indices(env: Mapping[str, str] | None = None) -> frozenset[int] | None:
    """The GPU indices ``HANDYJOBS_GPUS`` allows, or None when it is unset or empty."""
    env = os.environ if env is None else env
    text = env.get(ALLOWED_ENV, "")
    if not text.strip():
        return None
    tokens = parse_gpu_spec(text, source=ALLOWED_ENV)
    if not all(_INDEX_RE.fullmatch(t) for t in tokens):
        raise UsageError(
            f"{ALLOWED_ENV}={text!r}: list GPU indices, not UUIDs, such as 0,1,3; or unset it"
        )
    return frozenset(int(t) for t in tokens)


def memory_threshold_mib(env: Mapping[str, str] | None = None) -> int:
    """``HANDYJOBS_GPU_MEM_THRESHOLD_MIB`` (default 1024): memory use above it means busy."""
    env = os.environ if env is None else env
    text = env.get(THRESHOLD_ENV, "").strip()
    if not text:
        return DEFAULT_THRESHOLD_MIB
    if not _INDEX_RE.fullmatch(text):
        raise UsageError(
            f"{THRESHOLD_ENV}={text!r} is not a whole number of MiB; "
            f"set it to e.g. {DEFAULT_THRESHOLD_MIB} or unset it"
        )
    return int(text)


def policy_from_env(env: Mapping[str, str] | None = None) -> GpuPolicy:
    """The policy a job starts under, read from the caller's environment."""
    allowed = allowed_indices(env)
    return GpuPolicy(None if allowed is None else tuple(sorted(allowed)), memory_threshold_mib(env))


def check_allowed(indices: Sequence[int], policy: GpuPolicy) -> None:
    """Refuse GPUs outside ``HANDYJOBS_GPUS`` (bad input: it can never work)."""
    if policy.allowed is None:
        return
    outside = [g for g in indices if g not in policy.allowed]
    if outside:
        allowed = ",".join(str(g) for g in sorted(policy.allowed)) or "none"
        raise UsageError(
            f"GPU {','.join(map(str, outside))} is outside {ALLOWED_ENV}={allowed}; "
            f"pick GPUs from that list or change {ALLOWED_ENV}"
        )


# ---- one GPU ----------------------------------------------------------------------------------


def blocker(gpu: GpuInfo, threshold_mib: int, ignore_pids: Iterable[int] = ()) -> Blocker | None:
    """Why this GPU is busy for anyone (not counting our own bookings), or None when idle.

    ``ignore_pids`` are processes that do not count (a job's own, when it checks itself).
    """
    if gpu.mig:  # first: a MIG parent read without root also has an error on its memory
        return Blocker(gpu.index, BlockKind.MIG)
    if gpu.error is not None:
        return Blocker(gpu.index, BlockKind.UNREADABLE, detail=gpu.error)
    ignored = set(ignore_pids)
    procs = [p for p in gpu.processes if p.pid not in ignored]
    if procs:
        users = tuple(GpuUser(p.pid, p.user, p.name) for p in procs)
        return Blocker(gpu.index, BlockKind.PROCESSES, processes=users)
    # The ignored processes' own memory is not someone else's use of the GPU.
    used = gpu.memory_used_mib - sum(
        p.used_memory_mib or 0 for p in gpu.processes if p.pid in ignored
    )
    if used > threshold_mib:
        return Blocker(gpu.index, BlockKind.MEMORY, used_mib=used, threshold_mib=threshold_mib)
    return None


def held_gpus(records: Iterable[JobRecord], exclude: str | None = None) -> dict[int, str]:
    """GPU index -> name of the running (or paused) job of ours that holds it."""
    held: dict[int, str] = {}
    for record in records:
        if record.name != exclude and record.state in HOLDING:
            for gpu in record.current.gpus:
                held.setdefault(gpu, record.name)
    return held


def free_gpus(discovery: Discovery, held: Mapping[int, str], policy: GpuPolicy) -> list[int]:
    """GPUs allowed by ``policy``, held by no job of ours and idle, lowest index first."""
    allowed = None if policy.allowed is None else set(policy.allowed)
    return [
        g.index
        for g in sorted(discovery.gpus, key=lambda g: g.index)
        if (allowed is None or g.index in allowed)
        and g.index not in held
        and blocker(g, policy.threshold_mib) is None
    ]


# ---- the queue --------------------------------------------------------------------------------


@frozen
class Limits:
    """How many jobs may run at once: machine-wide, and per group (None: no limit)."""

    total: int | None = None
    groups: Mapping[str, int] = field(default_factory=dict)

    def of_group(self, group: str | None) -> int | None:
        """The limit of ``group``, if it has one."""
        if group is None:
            return None
        return self.groups.get(group) or None


@frozen
class Plan:
    """What one scheduling pass decided: who starts on which GPUs, why others wait, who fails."""

    starts: dict[str, tuple[int, ...]]
    waits: dict[str, Wait]
    #: Runs whose dependency ended badly (or vanished): name -> (dependency, its state).
    failed: dict[str, tuple[str, JobState | None]]


#: Why a held run waits: until the user releases it.
HELD = Wait(0, 0, held=True)


def queue_order(records: Iterable[JobRecord]) -> list[JobRecord]:
    """Queued runs: higher ``--priority`` first, then first queued first; held ones are out."""
    # Runs a cluster's scheduler queues wait in its queue, not in this machine's; a held run
    # waits for its release, and keeps no place (nor GPUs) from the others meanwhile.
    return sorted(
        (
            r
            for r in records
            if r.state is JobState.QUEUED and r.current.backend in OWN_QUEUE and not r.current.held
        ),
        key=lambda r: (-r.spec.priority, r.current.created_at, r.name),
    )


def _mine(spec: JobSpec, free: list[int]) -> list[int]:
    """The GPUs a queued job keeps from the free ones: all it named, or the lowest it would take."""
    if spec.gpus is not None:
        return list(spec.gpus)
    return free[: spec.ngpus or 0]


def plan(
    records: Sequence[JobRecord],
    discovery: Discovery | None,
    deps: Mapping[str, JobState | None] | None = None,
    limits: Limits | None = None,
) -> Plan:
    """One scheduling pass: which queued jobs start now (and on which GPUs), why the rest wait.

    Jobs are taken in queue order. A job waits for its dependencies (``deps`` holds their
    states; a missing name is a job that is gone), then for a free slot under the parallel
    limits, then for its GPUs. A job that cannot have its GPUs still keeps them, so a later
    job never overtakes an earlier one on the GPUs that one needs; jobs that book no GPU
    never wait behind ones that do. Each job is judged by the GPU policy it was started under.
    """
    deps, limits, held = deps or {}, limits or Limits(), held_gpus(records)
    running = [r for r in records if r.state in HOLDING]
    paused = {r.spec.group for r in records if r.state is JobState.PAUSED and r.spec.group}
    total = len(running)
    by_group = Counter(r.spec.group for r in running if r.spec.group is not None)
    kept: dict[int, str] = {}
    result = Plan({}, {}, {})

    def wait(name: str, why: Wait) -> None:
        # The position counts only the runs that still wait after this pass.
        result.waits[name] = replace(why, position=len(result.waits) + 1)

    for record in queue_order(records):
        spec, name = record.spec, record.name
        pending, failed = _dependencies(record, deps)
        if failed is not None:
            result.failed[name] = failed
            continue
        if pending:
            wait(name, Wait(0, 0, after=tuple(pending)))
            continue
        if spec.group in paused:  # the user paused the group: nothing new starts in it
            wait(name, Wait(0, 0, group=spec.group, paused=True))
            continue
        full = _no_slot(spec, limits, total, by_group)
        if full is not None:
            wait(name, full)
            continue
        if spec.books_gpus:
            box = discovery or Discovery("none", ())
            free = free_gpus(box, {**held, **kept}, spec.policy)
            chosen = _chosen(spec, free)
            if chosen is None:
                wait(name, wait_reason(spec, box, held, kept, free))
                for g in _mine(spec, free):
                    kept.setdefault(g, name)
                continue
            for g in chosen:
                held[g] = name
        else:
            chosen = []
        result.starts[name] = tuple(chosen)
        total += 1
        if spec.group is not None:
            by_group[spec.group] += 1
    return result


def _no_slot(spec: JobSpec, limits: Limits, total: int, by_group: Counter[str]) -> Wait | None:
    """Why the job waits for a slot (the machine's or its group's limit), or None."""
    if limits.total is not None and total >= limits.total:
        return Wait(0, 0, limit=limits.total, running=total)
    group_limit = limits.of_group(spec.group)
    in_group = by_group.get(spec.group or "", 0)
    if group_limit is not None and in_group >= group_limit:
        return Wait(0, 0, limit=group_limit, running=in_group, group=spec.group)
    return None


def refuse_cycle(name: str, dep: str, records: Iterable[JobRecord]) -> None:
    """Refuse ``--after DEP`` for job ``name`` when DEP already waits, directly or through
    other queued jobs, for ``name``'s run: both would wait forever."""
    by_name = {r.name: r for r in records}
    seen: set[str] = set()
    todo = [dep]
    while todo:
        current = todo.pop()
        if current == name:
            raise UsageError(
                f"--after {dep}: job {dep} already waits (directly or not) for {name}, so both "
                "would wait forever; drop one of the two dependencies"
            )
        found = by_name.get(current)
        if current in seen or found is None or found.state is not JobState.QUEUED:
            continue
        seen.add(current)
        for nxt in found.spec.after:
            bound, target = found.current.after_runs.get(nxt), by_name.get(nxt)
            if bound and (target is None or target.current.run_id != bound):
                continue  # it waits for an earlier job of that name, not for this one
            todo.append(nxt)


def dep_key(name: str, run: Run) -> str:
    """How ``deps`` names the run that ``run`` waits for under job ``name``: ``NAME@RUNID``
    when it was bound at queue time (a run queued by an older handyjobs: the name)."""
    bound = run.after_runs.get(name)
    return f"{name}@{bound}" if bound else name


def dep_state(key: str, found: JobRecord | None) -> JobState | None:
    """The state of the run a :func:`dep_key` names, in ``found`` (that name's record now);
    None when it is gone (removed, or the name now belongs to another job)."""
    if found is None:
        return None
    _, _, run_id = key.partition("@")
    if not run_id:
        return found.state
    run = found.run_by_id(run_id)
    return None if run is None else run.state


def _dependencies(
    record: JobRecord, deps: Mapping[str, JobState | None]
) -> tuple[list[str], tuple[str, JobState | None] | None]:
    """The dependencies still running, and the first that ended badly (or is gone), if any."""
    spec = record.spec
    pending: list[str] = []
    for dep in spec.after:
        state = deps.get(dep_key(dep, record.current))
        if state is not None and state.active:
            pending.append(dep)
        elif state is None or (state is not JobState.SUCCEEDED and not spec.after_any):
            return pending, (dep, state)
    return pending, None


def _chosen(spec: JobSpec, free: list[int]) -> list[int] | None:
    """The GPUs the job takes now, or None when they are not all free."""
    if spec.force and spec.gpus is not None:
        # --force: the user knows better than our checks (another job's, another user's).
        return list(spec.gpus)
    chosen = _mine(spec, free)
    want = len(spec.gpus) if spec.gpus is not None else spec.ngpus
    return chosen if set(chosen) <= set(free) and len(chosen) == want else None


def wait_reason(
    spec: JobSpec,
    discovery: Discovery,
    held: Mapping[int, str],
    kept: Mapping[int, str],
    free: Sequence[int],
    position: int | None = None,
) -> Wait:
    """Why ``spec`` cannot have its GPUs now, as data: per GPU, what keeps it."""
    by_index = discovery.by_index()
    allowed = None if spec.policy.allowed is None else set(spec.policy.allowed)
    if spec.gpus is not None:
        candidates = list(spec.gpus)
    else:
        candidates = sorted(g for g in by_index if allowed is None or g in allowed)
    blockers: list[Blocker] = []
    for index in candidates:
        if index in held:
            blockers.append(Blocker(index, BlockKind.HELD, job=held[index]))
        elif index in kept:
            blockers.append(Blocker(index, BlockKind.WANTED, job=kept[index]))
        elif index not in by_index:
            blockers.append(Blocker(index, BlockKind.MISSING))
        else:
            why = blocker(by_index[index], spec.policy.threshold_mib)
            if why is not None and not (spec.force and spec.gpus is not None):
                blockers.append(why)
    needed = len(spec.gpus) if spec.gpus is not None else spec.ngpus or 0
    free_set = set(free)
    have = sum(1 for g in candidates if g in free_set)
    return Wait(
        needed=needed,
        free=min(have, needed) if spec.gpus is not None else have,
        blockers=tuple(blockers),
        by_count=spec.gpus is None,
        position=position,
    )


def book(
    record: JobRecord,
    records: Sequence[JobRecord],
    discovery: Discovery | None,
    deps: Mapping[str, JobState | None] | None = None,
    limits: Limits | None = None,
) -> tuple[tuple[int, ...] | None, Wait | None]:
    """Decide a new job's start (it is already among ``records`` as queued).

    Returns ``(gpus, None)`` when it may start now (on those GPUs, maybe none), or
    ``(None, wait)`` when it must queue. A job queues for its dependencies and for a free slot
    whatever ``--wait`` says; for busy GPUs only with ``--wait``, else :class:`GpuBusy` is
    raised; a held run (``start --hold``) queues as held. :class:`UsageError` when it can never
    start here, :class:`JobStateError` when a dependency has already failed.
    """
    spec = record.spec
    if spec.ngpus is not None and discovery is not None:
        usable = [
            g.index
            for g in discovery.gpus
            if spec.policy.allowed is None or g.index in spec.policy.allowed
        ]
        if spec.ngpus > len(usable):
            raise UsageError(
                f"--ngpus {spec.ngpus} asks for more GPUs than handyjobs may use here "
                f"({len(usable)}); ask for fewer"
            )
    if record.current.held:
        return None, HELD
    result = plan(records, discovery, deps, limits)
    if record.name in result.starts:
        return result.starts[record.name], None
    if record.name in result.failed:
        dep, state = result.failed[record.name]
        how = "is gone" if state is None else state.value
        raise JobStateError(
            f"job {dep} {how}; --after starts a job only after a success "
            "(use --after-any to start it whatever the outcome)"
        )
    wait = result.waits[record.name]
    if wait.for_gpus and not spec.wait:
        raise GpuBusy(wait, by_count=spec.gpus is None)
    return None, wait
