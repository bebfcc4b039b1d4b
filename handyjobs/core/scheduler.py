"""Bringing the registry up to date with what runs, and the one scheduling pass for the queue.

The pass discovers GPUs once, outside the lock (a slow or wedged driver must not hold up every
other command), then under the lock reconciles the active runs (ended ones free their GPUs)
and grants the queued runs that can start, in queue order (:func:`lifecycle.schedule`).

Who runs it: ``start`` books its own job; a runner whose job ended runs it at once (its GPUs
are free); ``stop`` runs it; and while jobs wait, the one queued runner that holds
``scheduler.lock`` runs it about once a second for all of them. The other queued runners only
read their own record, so the cost of waiting does not grow with the number of jobs waiting.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from handyjobs.core import registry
from handyjobs.core.records import JobRecord, JobState

if TYPE_CHECKING:
    from handyjobs.gpus.discovery import Watch


def refresh_locked(reg: registry.Registry) -> list[JobRecord]:
    """Reconcile every active record of a locked registry; return the ones that changed."""
    from handyjobs.backends import base as backends  # lazy: `list` reconciles without it (start-up)
    from handyjobs.core import lifecycle  # lazy: `list` reconciles without it (start-up)

    changed = []
    for record in reg.records():
        probe = backends.get(record.current.backend)
        if lifecycle.reconcile(reg, record, probe, reg.root):
            changed.append(record)
    return changed


def refresh(records: list[JobRecord], root: Path) -> list[JobRecord]:
    """Reconcile records read without the lock; write back under the lock only if needed.

    On a read-only or full disk the write-back fails quietly: what is shown is still right,
    because it was reconciled from the runners' own status files.
    """
    active = [r for r in records if r.state.active]
    if not active:
        return records  # nothing to reconcile: `list` of finished jobs imports no more
    from handyjobs.backends import base as backends  # lazy: `list` reconciles without it (start-up)
    from handyjobs.core import lifecycle  # lazy: `list` reconciles without it (start-up)

    scratch = lifecycle.Scratch(records)
    for record in active:
        lifecycle.reconcile(scratch, record, backends.get(record.current.backend), root)
    if not scratch.changed:
        return records
    from handyjobs.errors import HandyjobsError  # lazy: `list` reconciles without it (start-up)

    try:
        with registry.locked(root) as reg:
            refresh_locked(reg)
            fresh = {name: reg.get(name) for name in scratch.changed}
    except HandyjobsError:
        return [scratch.records[r.name] for r in records]
    return [fresh.get(r.name) or scratch.records[r.name] for r in records]


def schedule_pass(
    root: Path, env: Mapping[str, str] | None = None, looking: Watch | None = None
) -> list[str]:
    """Discover GPUs (outside the lock, only if a queued job needs them), then grant what can
    start; return the names granted. ``looking`` keeps NVML started across passes."""
    active = registry.load_active(root)
    queued = [r for r in active if r.state is JobState.QUEUED]
    if not queued:
        return []
    from handyjobs.core import config, lifecycle  # lazy: `list` reconciles without it (start-up)

    discovery = None
    if any(r.spec.books_gpus for r in queued):
        from handyjobs.gpus import (
            discovery as gpus,  # lazy: `list` reconciles without it (start-up)
        )

        discovery = looking.discover() if looking is not None else gpus.discover(env)
    limits = config.load(root).limits(env)
    with registry.locked(root) as reg:
        refresh_locked(reg)
        return lifecycle.schedule(reg, reg.records(), discovery, limits)
