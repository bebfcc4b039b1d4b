"""Bringing the registry up to date with what runs, and the one scheduling pass for the queue.

The pass discovers GPUs once, outside the lock (a slow or wedged driver must not hold up every
other command), then under the lock reconciles the active runs (ended ones free their GPUs)
and grants the queued runs that can start, in queue order (:func:`schedule`).

Who runs it: ``start`` books its own job; a runner whose job ended runs it at once (its GPUs
are free); ``stop`` runs it; and while jobs wait, the one queued runner that holds
``scheduler.lock`` runs it about once a second for all of them. The other queued runners only
read their own record, so the cost of waiting does not grow with the number of jobs waiting.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from handyjobs.core import paths, registry
from handyjobs.core.records import (
    GpuBaseline,
    JobRecord,
    JobState,
    LaunchEnv,
    LostKind,
    Reason,
    Wait,
)
from handyjobs.core.stores import Store

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from handyjobs.core.booking import Limits
    from handyjobs.gpus.discovery import Discovery, Watch


def refresh_locked(reg: registry.Registry) -> list[JobRecord]:
    """Reconcile every active record of a locked registry; return the ones that changed."""
    from handyjobs.backends import base as backends  # lazy: `list` reconciles without it (start-up)
    from handyjobs.core import lifecycle  # lazy: `list` reconciles without it (start-up)

    changed = []
    for record in reg.records():
        probe = backends.get(record.current.backend)
        if lifecycle.reconcile(reg, record, probe, reg.root):
            changed.append(record)
            fresh = reg.get(record.name)
            if fresh is not None and _orphaned(fresh):
                _relaunch(reg, fresh)
    return changed


def _orphaned(record: JobRecord) -> bool:
    """A queued run of this machine with no runner and no session: the machine restarted while
    it waited (reconciling took the old runner away). Starts always launch before they save."""
    run = record.current
    return (
        run.state is JobState.QUEUED
        and run.runner is None
        and not run.handle
        and run.boot_id is not None
    )


def _relaunch(reg: registry.Registry, record: JobRecord) -> None:
    """Give a queued run left by a restart of the machine a new runner, in a new session, with
    the environment kept from its start (the caller's when none was kept); it waits its turn
    again. When that fails the run fails to start, with why."""
    import json  # lazy: only after a restart of the machine (start-up of `list`)
    import sys  # lazy: only after a restart of the machine (start-up of `list`)

    from handyjobs.backends import base as backends  # lazy: only here (start-up of `list`)
    from handyjobs.core import lifecycle  # lazy: `list` reconciles without it (start-up)
    from handyjobs.errors import HandyjobsError  # lazy: only here (start-up of `list`)

    name, run = record.name, record.current
    backend = backends.get(run.backend)
    folder = paths.job_dir(name, reg.root)
    try:
        try:
            env = LaunchEnv.from_dict(json.loads(paths.env_path(name, reg.root).read_bytes())).env
        except FileNotFoundError:
            env = dict(os.environ)
        # The old runner's status names a process of the last boot: the new one writes its own.
        paths.status_path(name, run.run_id, reg.root).unlink(missing_ok=True)
        session = backend.session_name(name, run.run, run.run_id)
        argv = [sys.executable, "-m", "handyjobs.jobside.runner", str(reg.root), name, run.run_id]
        started = backend.launch(
            backends.LaunchRequest(
                name, run.run_id, session, argv, str(folder), record.spec, run.run, env
            )
        )
    except (OSError, ValueError, KeyError, TypeError, HandyjobsError) as exc:
        why = Reason(LostKind.START_FAILED, str(exc))
        lifecycle.fail_to_start(reg, name, run.run_id, why)
        return
    # The backend's handle and the runner's identity, as a start records them.
    run.handle, run.runner = started.handle, started.runner
    reg.put(record)


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
    from handyjobs.core import config  # lazy: `list` reconciles without it (start-up)

    discovery = None
    if any(r.spec.books_gpus for r in queued):
        from handyjobs.gpus import (
            discovery as gpus,  # lazy: `list` reconciles without it (start-up)
        )

        discovery = looking.discover() if looking is not None else gpus.discover(env)
    try:
        limits = config.load(root).limits(env)
    except config.ConfigError as exc:
        # The queue starts nothing on settings it cannot read, and says so on every waiting
        # run (a stale "1 of 1 running" would send the user looking in the wrong place).
        with registry.locked(root) as reg:
            refresh_locked(reg)
            why = Wait(0, 0, config=str(exc.path), reason=exc.detail)
            for r in reg.records():
                if r.state is JobState.QUEUED and not r.current.held:
                    lifecycle_wait(reg, r, why)
        return []
    with registry.locked(root) as reg:
        refresh_locked(reg)
        return schedule(reg, reg.records(), discovery, limits)


def lifecycle_wait(store: Store, record: JobRecord, wait: Wait) -> None:
    """Record why ``record``'s current run waits."""
    from handyjobs.core import lifecycle  # lazy: only the queue pass (start-up of `list`)

    lifecycle.set_wait(store, record.name, record.current.run_id, wait)


def schedule(
    store: Store,
    records: list[JobRecord],
    discovery: Discovery | None,
    limits: Limits | None = None,
) -> list[str]:
    """One pass over the queue: grant what can start now, fail what never will, say why the
    rest wait.

    ``records`` are the active records under the lock; dependencies are looked up in
    ``store`` (finished jobs included). Returns the names granted.
    """
    from handyjobs.core import booking, lifecycle  # lazy: only the queue pass (start-up of `list`)

    deps: dict[str, JobState | None] = {}
    for record in records:
        if record.state is JobState.QUEUED:
            for dep in record.spec.after:
                key = booking.dep_key(dep, record.current)
                if key not in deps:
                    deps[key] = booking.dep_state(key, store.get(dep))
    result = booking.plan(records, discovery, deps, limits)
    by_name = {r.name: r for r in records}
    granted = []
    for name, gpus in result.starts.items():
        base = baseline(discovery, gpus)
        if lifecycle.grant(store, name, by_name[name].current.run_id, gpus, base):
            granted.append(name)
    for name, wait in result.waits.items():
        lifecycle.set_wait(store, name, by_name[name].current.run_id, wait)
    for name, (dep, state) in result.failed.items():
        why = Reason(LostKind.DEPENDENCY_FAILED, "gone" if state is None else state.value, job=dep)
        lifecycle.fail_to_start(store, name, by_name[name].current.run_id, why)
    return granted


def baseline(discovery: Discovery | None, gpus: tuple[int, ...]) -> tuple[GpuBaseline, ...]:
    """How the GPUs about to be booked look now: memory in use and their processes."""
    if discovery is None or not gpus:
        return ()
    found = discovery.by_index()
    return tuple(
        GpuBaseline(g, found[g].memory_used_mib, tuple(p.pid for p in found[g].processes))
        for g in gpus
        if g in found and found[g].error is None
    )
