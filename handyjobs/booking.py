"""Which GPUs a job may take: conflicts with other jobs and users, free choice, the queue.

Every decision here is made by a caller that holds the registry lock, so the choice and the
reservation are one step: two jobs can never book the same GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from handyjobs import gpus
from handyjobs.errors import GpuError, UsageError
from handyjobs.records import JobRecord, JobSpec, JobState
from handyjobs.registry import Registry


@dataclass(frozen=True)
class Policy:
    """What the machine's settings allow: the GPUs handyjobs may use, the busy threshold."""

    allowed: frozenset[int] | None
    threshold_mib: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Policy:
        """Read ``HANDYJOBS_GPUS`` and ``HANDYJOBS_GPU_MEM_THRESHOLD_MIB``."""
        return cls(gpus.allowed_indices(env), gpus.memory_threshold_mib(env))


def held_gpus(reg: Registry, exclude: str | None = None) -> dict[int, str]:
    """GPU index -> name of the running job that holds it."""
    held: dict[int, str] = {}
    for record in reg.jobs.values():
        if record.name != exclude and record.state is JobState.RUNNING:
            for gpu in record.current.gpus:
                held.setdefault(gpu, record.name)
    return held


def _queue_order(reg: Registry) -> list[JobRecord]:
    """The queued jobs, first queued first."""
    return sorted(
        (r for r in reg.jobs.values() if r.state is JobState.QUEUED),
        key=lambda r: r.current.created_at,
    )


def queued_ahead(
    reg: Registry, discovery: gpus.Discovery, policy: Policy, name: str
) -> dict[int, str]:
    """GPU index -> name of a job queued before ``name`` that keeps it (as :func:`plan` does).

    A job queued by number keeps every GPU it asked for; one queued by count keeps the free
    GPUs it would take, even while it waits for more.
    """
    free = free_set(reg, discovery, policy)
    kept: dict[int, str] = {}
    for record in _queue_order(reg):
        if record.name == name:
            break
        spec = record.spec
        mine = list(spec.gpus) if spec.gpus is not None else sorted(free)[: spec.ngpus or 0]
        for gpu in mine:
            kept.setdefault(gpu, record.name)
        free -= set(mine)
    return kept


def check_allowed(indices: tuple[int, ...], policy: Policy) -> None:
    """Refuse GPUs outside ``HANDYJOBS_GPUS`` (bad input: it can never work)."""
    if policy.allowed is None:
        return
    outside = [g for g in indices if g not in policy.allowed]
    if outside:
        allowed = ",".join(str(g) for g in sorted(policy.allowed)) or "none"
        raise UsageError(
            f"GPU {','.join(map(str, outside))} is outside HANDYJOBS_GPUS={allowed}; "
            "pick GPUs from that list or change HANDYJOBS_GPUS"
        )


def free_set(reg: Registry, discovery: gpus.Discovery, policy: Policy) -> set[int]:
    """GPUs no running job holds, allowed, with no compute process and memory under threshold."""
    return set(gpus.free_indices(discovery, held_gpus(reg), policy.threshold_mib, policy.allowed))


def plan(reg: Registry, discovery: gpus.Discovery, policy: Policy) -> dict[str, tuple[int, ...]]:
    """Which queued jobs can start now, and on which GPUs, in queue order.

    A job that cannot start still reserves what it waits for, so a later job never overtakes
    an earlier one on the GPUs that one needs: queued jobs start in the order they queued.
    """
    free = free_set(reg, discovery, policy)
    starts: dict[str, tuple[int, ...]] = {}
    for record in _queue_order(reg):
        spec = record.spec
        if spec.gpus is not None:
            want = set(spec.gpus)
            if want <= free:
                starts[record.name] = tuple(spec.gpus)
            free -= want
        elif spec.ngpus:
            pick = sorted(free)[: spec.ngpus]
            if len(pick) == spec.ngpus:
                starts[record.name] = tuple(pick)
            free -= set(pick)
    return starts


def explain(
    reg: Registry, discovery: gpus.Discovery, policy: Policy, spec: JobSpec, name: str
) -> str:
    """Why the GPUs a job asks for are not free now, in one line."""
    held = held_gpus(reg, exclude=name)
    wanted = queued_ahead(reg, discovery, policy, name)
    by_index = {g.index: g for g in discovery.gpus}
    candidates = spec.gpus if spec.gpus is not None else sorted(by_index)
    reasons = []
    for index in candidates:
        if policy.allowed is not None and index not in policy.allowed:
            continue
        if index in held:
            reasons.append(f"GPU {index} is held by job {held[index]}")
        elif index in wanted:
            reasons.append(f"GPU {index} is wanted by queued job {wanted[index]}")
        elif index in by_index:
            why = gpus.busy_reason(by_index[index], policy.threshold_mib)
            if why:
                reasons.append(f"GPU {index} is busy: {why}")
    if spec.ngpus:
        # GPUs that jobs queued earlier keep are not free for this one
        free = len(free_set(reg, discovery, policy) - set(wanted))
        head = f"only {free} of the {spec.ngpus} GPUs asked for are free"
        return head + (f" ({'; '.join(reasons)})" if reasons else "")
    return "; ".join(reasons) or "the GPUs asked for are not free"


def book(
    reg: Registry, discovery: gpus.Discovery, policy: Policy, record: JobRecord
) -> tuple[int, ...] | None:
    """GPUs for a new job (already in ``reg`` as queued), or None when it must wait.

    Raises :class:`GpuError` when the GPUs are not free and the job may not wait.
    """
    spec = record.spec
    if spec.gpus is not None and spec.force:
        return spec.gpus  # --force: the user knows better than our checks
    if spec.ngpus is not None:
        usable = [
            g.index for g in discovery.gpus if policy.allowed is None or g.index in policy.allowed
        ]
        if spec.ngpus > len(usable):
            raise UsageError(
                f"--ngpus {spec.ngpus} asks for more GPUs than handyjobs may use here "
                f"({len(usable)}); ask for fewer"
            )
    got = plan(reg, discovery, policy).get(record.name)
    if got is not None:
        return got
    if spec.wait:
        return None
    why = explain(reg, discovery, policy, spec, record.name)
    hint = (
        "add --wait to queue for them"
        if spec.ngpus
        else "pick other GPUs, add --wait to queue, or pass --force"
    )
    raise GpuError(f"{why}; {hint} (see `handyjobs gpus`)")
