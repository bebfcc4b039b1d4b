"""Changing a queued job before it starts: hold, release, edit, priority (pueue's ``switch``).

Each function reads the job's current run id first, checks what it can outside the lock (the
spec, as ``start`` checks it; GPU discovery), then under the registry lock acts only if that
run is still the current one and still waits: a job that starts meanwhile is refused whole,
never half-changed. Every change goes through :mod:`handyjobs.core.lifecycle`; a scheduling
pass follows, so that positions, waits and grants reflect it at once. A job that a cluster's
scheduler queues is held and released in that queue (its backend's ``hold``); ``edit`` and
``priority`` change jobs of this machine's queue only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence

from handyjobs.backends import base as backends
from handyjobs.core import booking, jobs, lifecycle, paths, registry, scheduler
from handyjobs.core import options as table
from handyjobs.core.records import JobRecord, JobSpec, JobState, Run
from handyjobs.errors import GpuError, HandyjobsError, JobStateError, UsageError
from handyjobs.structs import replace

#: The spec fields an edit takes from the checked request; every other field stays as it was.
_EDITED_FIELDS = ("args", "env", "gpus", "ngpus", "cpu", "force", "priority", "after", "after_any")


def _waiting(record: JobRecord, what: str, cluster: bool = False) -> Run:
    """The job's current run, when it still waits in this machine's queue (or, ``cluster``,
    in its own scheduler's); else one line."""
    run, name = record.current, record.name
    if run.state is not JobState.QUEUED or run.started_at is not None:
        state = "is running" if run.state.active else f"has ended ({run.state.value})"
        raise JobStateError(
            f"job {name} {state}; {what} changes a queued job only before it starts "
            f"(`handyjobs restart {name}` runs it again, with changes)"
        )
    if run.stop_requested:
        raise JobStateError(f"job {name} is being stopped; {what} changes nothing now")
    if run.backend not in booking.OWN_QUEUE and not cluster:
        raise JobStateError(
            f"job {name} waits in its cluster scheduler's queue, not this machine's; "
            f"{what} changes jobs of this machine's queue"
        )
    return run


#: What one control does to the job under the lock, given the registry and the job's record.
_Change = Callable[[registry.Registry, JobRecord], None]


def _locked_change(
    name: str, run_id: str, what: str, change: _Change, cluster: bool = False
) -> JobRecord:
    """Under the lock: ``change`` the job's run ``run_id`` if it still waits; the record after."""
    root = paths.home()
    with registry.locked(root) as reg:
        scheduler.refresh_locked(reg)
        current = reg.get(name)
        if current is None:
            raise jobs.not_found(name)
        if current.current.run_id != run_id:
            raise JobStateError(f"job {name} was started again meanwhile; look at it and retry")
        _waiting(current, what, cluster)
        change(reg, current)
        record = reg.get(name) or current
    with contextlib.suppress(GpuError, UsageError):
        scheduler.schedule_pass(root)  # places and waits as they are now; a release may start
    return jobs.get_job(name) if record.state.active else record


def hold_job(name: str) -> JobRecord:
    """Keep a queued job out of the queue until :func:`release_job`; its record after.

    A job a cluster's scheduler queues is held there (its backend asks it), then recorded.
    """
    return _hold(name, True)


def release_job(name: str) -> JobRecord:
    """Let a held job back into the queue (it may start at once); its record after."""
    return _hold(name, False)


def _hold(name: str, held: bool) -> JobRecord:
    """Hold or release the job's queued run: in its scheduler first, if it has one (a
    refusal there changes nothing here), then in its record."""
    what = "hold" if held else "release"
    record = jobs.get_job(name)
    backend = backends.get(record.current.backend)
    run = _waiting(record, what, backend.queues)
    if held and run.held:
        raise JobStateError(f"job {name} is already held; `handyjobs release {name}` lets it go")
    if not held and not run.held:
        raise JobStateError(f"job {name} is not held; it waits in the queue already")
    backend.hold(run, held)

    def change(reg: registry.Registry, current: JobRecord) -> None:
        lifecycle.hold(reg, name, run.run_id, held=held)

    try:
        return _locked_change(name, run.run_id, what, change, backend.queues)
    except JobStateError:
        if held and backend.queues:  # it started meanwhile: a hold must not outlive it there
            with contextlib.suppress(HandyjobsError):
                backend.hold(run, False)
        if not held and backend.queues:
            # Released there, and its scheduler started it before this command looked again:
            # the release did what was asked.
            after = jobs.get_job(name)
            now = after.current
            if now.run_id == run.run_id and now.state.active and not now.held:
                return after
        raise


def set_priority(name: str, priority: int) -> JobRecord:
    """Move a queued job in the queue: its ``--priority`` becomes ``priority``."""
    return edit_job(name, {"priority": priority})


def edit_job(
    name: str, given: Mapping[str, object], args: Sequence[str] | None = None
) -> JobRecord:
    """Change a queued job before it starts: the options typed (``given``: an option's name,
    one of :data:`~handyjobs.core.options.EDIT_OPTIONS`, and its value as ``start`` reads it)
    and the script's arguments (``args``); checked as ``start`` checks them. Its record after."""
    from handyjobs.core.spec import make_spec  # lazy: only an edit checks a spec here

    unknown = sorted(set(given) - set(table.EDIT_OPTIONS))
    if unknown:
        raise UsageError(f"edit cannot change {', '.join(unknown)}; see `handyjobs edit --help`")
    if not given and args is None:
        raise UsageError("nothing to change; give options or `-- ARGS` (`handyjobs edit --help`)")
    record = jobs.get_job(name)
    run = _waiting(record, "edit")
    old = record.spec
    base = table.request_from_spec(old)
    # One way of asking for GPUs replaces the other, as it would at start.
    if "gpus" in given:
        base = replace(base, ngpus=None, cpu=False)
    if "ngpus" in given:
        base = replace(base, gpus=None, cpu=False, force=False)
    req = table.request(base, given)
    if args is not None:
        req = replace(req, args=list(args))
    checked = make_spec(req, paths.home())
    spec: JobSpec = replace(old, **{f: getattr(checked.spec, f) for f in _EDITED_FIELDS})

    def change(reg: registry.Registry, current: JobRecord) -> None:
        bound = None
        if spec.after != old.after:
            # Bound to the runs it waits for now, as a start binds them; never a cycle.
            bound = {}
            for dep in spec.after:
                found = reg.get(dep)
                if found is None:
                    raise UsageError(
                        f"--after {dep}: no job of that name; see `handyjobs list --all`"
                    )
                booking.refuse_cycle(name, dep, reg.records())
                bound[dep] = found.current.run_id
        lifecycle.edit(reg, name, run.run_id, spec.procs, bound)
        fresh = reg.get(name) or current
        reg.put(replace(fresh, spec=spec))

    return _locked_change(name, run.run_id, "edit", change)
