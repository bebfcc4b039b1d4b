"""Acting on jobs that exist: stop, pause, resume, signal, restart, remove, clean.

Each function does one user-visible thing and raises a :class:`HandyjobsError` with a line
that says what to do next; state changes go through :mod:`handyjobs.core.lifecycle`,
processes and sessions through the run's backend.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from handyjobs.backends import base as backends
from handyjobs.core import jobs, lifecycle, paths, procs, registry, scheduler, starting
from handyjobs.core.options import STOP_GRACE_S
from handyjobs.core.records import JobRecord, JobState, LaunchEnv, Run, parse_time
from handyjobs.core.spec import check_given, parse_env
from handyjobs.errors import (
    GpuError,
    JobStateError,
    StorageError,
    UsageError,
    storage_error,
)
from handyjobs.gpus import discovery as gpumod
from handyjobs.structs import frozen, replace

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    pass


#: Seconds a runner gets to record the outcome once its job's processes are gone.
RUNNER_EXIT_S = 10.0


@frozen
class StopResult:
    """What ``stop`` did: the record afterwards, the run it stopped and the pids it ended."""

    record: JobRecord
    run_id: str
    pids: tuple[int, ...]
    was_queued: bool
    #: True when the run had been lost and stop ended what was left of it.
    was_lost: bool = False
    #: Why the GPUs could not be checked after the stop, when they could not.
    gpu_note: str | None = None
    #: The processes that outlived the grace after SIGTERM and got SIGKILL.
    killed: tuple[int, ...] = ()


def ask_to_stop(names: Sequence[str]) -> dict[str, str]:
    """Mark the queued runs of the jobs named as asked to stop, all under one lock, before
    any of them is stopped: one that waits (``--after``) for another stopped with it then
    ends stopped, not failed. Returns the runs marked: name -> run id, for :func:`stop_job`."""
    marked: dict[str, str] = {}
    with registry.locked(paths.home()) as reg:
        for name in dict.fromkeys(names):
            record = reg.get(name)
            if record is not None and record.state is JobState.QUEUED:
                run_id = record.current.run_id
                if lifecycle.request_stop(reg, name, run_id) or record.current.stop_requested:
                    marked[name] = run_id
    return marked


def cancel_together(names: Sequence[str]) -> dict[str, str]:
    """End at once the current runs of the jobs named whose backend can (a cluster's scheduler:
    one cancel for all), each marked asked to stop first; :func:`stop_job` then waits for each.
    Returns the runs taken: name -> run id, for :func:`stop_job`'s ``asked``."""
    root = paths.home()
    active = {r.name: r for r in registry.load_active(root) if r.name in set(names)}
    by_backend: dict[str, list[Run]] = {}
    for record in active.values():
        if backends.get(record.current.backend).queues:
            by_backend.setdefault(record.current.backend, []).append(record.current)
    if not any(len(runs) > 1 for runs in by_backend.values()):
        return {}
    names_of = {r.current.run_id: r.name for r in active.values()}
    marked, newly = {}, set()
    with registry.locked(root) as reg:
        for runs in by_backend.values():
            for run in runs:
                name = names_of[run.run_id]
                if lifecycle.request_stop(reg, name, run.run_id):
                    newly.add(run.run_id)
                mine = (reg.get(name) or active[name]).run_by_id(run.run_id)
                if mine is not None and mine.state.active and mine.stop_requested:
                    marked[run.run_id] = name  # ask_to_stop's marks included
    taken: set[str] = set()
    try:
        for backend, runs in by_backend.items():
            taken.update(backends.get(backend).cancel_many([r for r in runs if r.run_id in marked]))
    finally:
        # The ones not taken are stopped one by one, and marked then.
        with registry.locked(root) as reg:
            for run_id in newly - taken:
                lifecycle.request_stop(reg, marked.get(run_id, names_of[run_id]), run_id, False)
    return {marked[run_id]: run_id for run_id in taken}


def stop_job(name: str, grace_s: float = STOP_GRACE_S, asked: str | None = None) -> StopResult:
    """End every process of a job's current run (SIGTERM, grace, SIGKILL); mark it stopped.

    Only processes that carry the run's marker are signalled. A lost run's leftovers are
    ended too. The run is addressed by its id: a restart racing with this stop is untouched.
    ``asked``: the run id :func:`ask_to_stop` marked; that run found stopped already (a job
    it waited for was stopped first) is this stop's success.
    """

    root = paths.home()
    record = jobs.get_job(name)
    run = record.current
    backend = backends.get(run.backend)
    if run.run_id == asked and run.state is JobState.STOPPED:
        return StopResult(record, run.run_id, (), was_queued=run.started_at is None)
    if not run.state.active:
        if run.state is JobState.LOST and backend.leftover_pids(run):
            ended = backend.terminate(run, grace_s)
            with registry.locked(root) as reg:
                lifecycle.cleaned(reg, name, run.run_id, ended.pids)
                record = reg.get(name) or record
            _survivors(name, ended.left)
            return StopResult(record, run.run_id, ended.pids, False, was_lost=True)
        raise JobStateError(f"job {name} is not running (it {run.state.value}); nothing to stop")
    run_id = run.run_id
    marked = _mark_stopping(root, record, run_id, asked)
    if isinstance(marked, StopResult):
        return marked
    run = marked
    was_queued = run.state is JobState.QUEUED
    try:
        pids, killed, left = _end_run(backend, run, grace_s)
    except BaseException:  # Ctrl-C in the grace: the run goes on, and its end is its own
        if backend.runner_alive(run):
            with registry.locked(root) as reg:
                lifecycle.request_stop(reg, name, run_id, asked=False)
        raise
    try:
        with registry.locked(root) as reg:
            scheduler.refresh_locked(reg)  # folds the runner's "stopped"
            lifecycle.cancel(reg, name, run_id)  # the runner went without recording
            record = reg.get(name) or record
    except StorageError as exc:
        if not _disk_full(exc):
            raise
        raise StorageError(
            f"ended job {name} ({len(pids)} processes) but could not record it: {exc}"
        ) from exc
    with contextlib.suppress(GpuError, UsageError):
        scheduler.schedule_pass(root)  # queued jobs may have the GPUs now
    _survivors(name, left)
    stopped = record.run_by_id(run_id) or run
    note = _check_gpus_released(name, stopped, pids) if stopped.gpus else None
    return StopResult(
        record, run_id, tuple(sorted(pids)), was_queued, gpu_note=note, killed=tuple(sorted(killed))
    )


def _disk_full(exc: StorageError) -> bool:
    return isinstance(exc.__cause__, OSError) and paths.is_disk_full(exc.__cause__)


def _mark_stopping(
    root: Path, record: JobRecord, run_id: str, asked: str | None
) -> Run | StopResult:
    """Mark the run as asked to stop; the run to end, or the result when there is nothing to.
    On a full disk the mark cannot be saved: the run is ended all the same (a job filling the
    disk must be stoppable), and its runner records the outcome in the room it reserved."""
    name = record.name
    try:
        with registry.locked(root) as reg:
            lifecycle.request_stop(reg, name, run_id)
            current = reg.get(name)
            mine = None if current is None else current.run_by_id(run_id)
            if mine is not None and run_id == asked and mine.state is JobState.STOPPED:
                queued = mine.started_at is None  # runner went
                return StopResult(current or record, run_id, (), was_queued=queued)
            if mine is None or not mine.state.active:
                state = "was removed" if mine is None else mine.state.value
                raise JobStateError(f"job {name} is not running (it {state}); nothing to stop")
            return mine
    except StorageError as exc:
        if not _disk_full(exc):
            raise
        return record.current


def _end_run(
    backend: backends.Backend, run: Run, grace_s: float
) -> tuple[set[int], set[int], tuple[int, ...]]:
    """End the run's processes, then see its runner go: the pids ended, those that needed
    SIGKILL, and those that survived even that."""
    first = backend.terminate(run, grace_s)
    pids, killed = set(first.pids), set(first.killed)
    left: tuple[int, ...] = ()
    # The runner records the outcome and exits; a queued job that got its GPUs just as we
    # stopped it may start its process meanwhile: end that too.
    deadline = time.monotonic() + RUNNER_EXIT_S
    while backend.runner_alive(run) and time.monotonic() < deadline:
        if backend.leftover_pids(run):
            ended = backend.terminate(run, grace_s)
            pids.update(ended.pids)
            killed.update(ended.killed)
            left = ended.left
        time.sleep(0.02)
    if backend.runner_alive(run):
        backend.end_runner(run)  # hung: it will never record; we do, below
    return pids, killed, left


@frozen
class Signalled:
    """What pause, resume or kill did to a job's run: the record after, and how many of its
    processes got the signal (None: its backend's scheduler did it; for ``--main``, its main
    process's pid)."""

    record: JobRecord
    count: int | None
    main: int | None = None


def _acting_on(name: str, states: Sequence[JobState], verb: str) -> tuple[JobRecord, Run]:
    """The job's current run when it is in one of ``states`` and has begun; else one line
    saying why there is nothing to ``verb``."""
    record = jobs.get_job(name)
    run = record.current
    if run.state in states and run.started_at is not None and not run.stop_requested:
        return record, run
    if run.stop_requested and run.state.active:
        why = "is being stopped"
    elif run.state is JobState.QUEUED:
        why = "is queued, not running" + (
            f" (`handyjobs hold {name}` keeps it from starting)" if verb == "pause" else ""
        )
    elif run.state.active and run.started_at is None:
        why = "is starting; try again in a moment"
    elif run.state.active:
        why = f"is {run.state.value}" if verb != "resume" else "is not paused (it runs)"
    else:
        why = f"is not running (it {run.state.value})"
    raise JobStateError(f"job {name} {why}; nothing to {verb}")


def pause_job(name: str, paused: bool = True) -> Signalled:
    """Stop every process of a running job, or continue a paused one's, through its backend
    (SIGSTOP and SIGCONT here, a cluster's suspend and resume there).

    Only the run's processes are signalled (its cgroup's members, identity checked). While it
    is paused its GPUs stay booked and its group starts no queued job; ``stop`` still ends it.
    A refusal (the scheduler's) leaves the record as it was. ``count`` is None when the
    backend's scheduler did it.
    """
    verb = "pause" if paused else "resume"
    _, run = _acting_on(name, (JobState.RUNNING,) if paused else (JobState.PAUSED,), verb)
    count = backends.get(run.backend).pause(run, paused)
    if count == 0:
        raise JobStateError(f"job {name} has no process left to {verb} (it is ending)")
    root = paths.home()
    with registry.locked(root) as reg:
        lifecycle.pause(reg, name, run.run_id, paused)
        record = reg.get(name)
        mine = None if record is None else record.run_by_id(run.run_id)
    if (
        record is None
        or mine is None
        or mine.state is not (JobState.PAUSED if paused else JobState.RUNNING)
    ):
        ended = "was removed" if mine is None else mine.state.value
        raise JobStateError(f"job {name} ended as it was being {verb}d (it {ended})")
    if not paused:
        with contextlib.suppress(GpuError, UsageError):
            scheduler.schedule_pass(root)  # its group's queued jobs may start now
    return Signalled(record, count)


def signal_job(name: str, sig: int, main_only: bool = False) -> Signalled:
    """Send ``sig`` to every process of a running (or paused) job, identity checked (or its
    scheduler does, ``count`` None), or with ``main_only`` to its main process alone
    (torchrun's agent, or the script) on this machine."""
    record, run = _acting_on(name, (JobState.RUNNING, JobState.PAUSED), "signal")
    backend = backends.get(run.backend)
    if main_only:
        main = run.main
        if backend.queues:
            raise JobStateError(
                f"job {name} runs under a cluster's scheduler, which signals all of it: "
                "leave out --main"
            )
        if (
            main is None
            or main.start is None
            or not procs.signal_verified(main.pid, main.start, run.run_id, sig)
        ):
            raise JobStateError(f"job {name}: its main process is gone; nothing to signal")
        return Signalled(record, 1, main.pid)
    count = backend.signal(run, sig)
    if count == 0:
        raise JobStateError(f"job {name} has no process left to signal (it is ending)")
    return Signalled(record, count)


def _survivors(name: str, left: Sequence[int]) -> None:
    if left:
        raise JobStateError(
            f"job {name}: processes {', '.join(map(str, sorted(left)))} survived SIGKILL; "
            "check them with `ps -p`"
        )


def _check_gpus_released(name: str, run: Run, pids: set[int]) -> str | None:
    """Check that each booked GPU is back to how it was when booked: none of the job's
    processes, no memory beyond what it held then. Raises naming what is left; returns a note
    when the GPUs could not be checked (no driver answer), else None."""

    before = None
    if run.baseline:
        before = gpumod.Discovery(
            "baseline",
            tuple(
                gpumod.GpuInfo(
                    index=b.gpu,
                    uuid="",
                    name="",
                    memory_used_mib=b.memory_used_mib,
                    memory_total_mib=0,
                    utilization_pct=None,
                    processes=tuple(gpumod.GpuProcess(p, None) for p in b.pids),
                )
                for b in run.baseline
            ),
        )
    deadline = time.monotonic() + 5.0
    with gpumod.watch() as looking:  # NVML started once for the whole window
        while True:
            now = looking.discover()
            left = gpumod.leftovers(before, now, run.gpus, pids)
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    seen = {g.index for g in now.gpus if g.error is None}
    unchecked = [g for g in run.gpus if g not in seen]
    if left:
        parts = []
        for item in left:
            what = []
            if item.pids:
                what.append(f"processes {', '.join(map(str, item.pids))}")
            if item.extra_memory_mib:
                what.append(f"{item.extra_memory_mib} MiB more memory than before the job")
            parts.append(f"GPU {item.gpu} still has {' and '.join(what)}")
        raise GpuError(
            f"job {name} stopped, but {'; '.join(parts)}; check `handyjobs gpus` and end "
            "them by pid"
        )
    if unchecked:
        why = now.note or "the driver did not answer for them"
        return f"GPU {','.join(map(str, unchecked))} could not be checked after the stop ({why})"
    return None


@frozen
class RestartResult:
    """The record after ``restart``, and whether the first start's environment was reused."""

    record: JobRecord
    env_reused: bool


def restart_job(
    name: str,
    env: Sequence[str] = (),
    grace_s: float = STOP_GRACE_S,
    caller_env: Mapping[str, str] | None = None,
    args: Sequence[str] | None = None,
) -> RestartResult:
    """Start the job's spec again as a new run, stopping the current one first if it runs.

    The run gets the environment captured at the job's first start (``env`` items, K=V,
    change single variables); only a job recorded before that was kept uses the caller's.
    ``args``, when given, replace the script's arguments from now on.
    """

    overrides = parse_env(env)
    check_given(args or (), overrides)  # before the current run is stopped
    record = jobs.get_job(name)
    backend = backends.get(record.current.backend)
    backend.check()
    if record.state.active:
        with contextlib.suppress(JobStateError):  # it may end by itself meanwhile
            stop_job(name, grace_s)
    root = paths.home()
    kept = _read_env(name, root)
    base = kept if kept is not None else dict(os.environ if caller_env is None else caller_env)
    spec = record.spec
    if overrides:
        spec = replace(spec, env=tuple(sorted({**dict(spec.env), **dict(overrides)}.items())))
    if args is not None:
        spec = replace(spec, args=tuple(args))
    discovery = None
    if spec.books_gpus:
        discovery = gpumod.discover(base)
    with registry.locked(root) as reg:
        starting.sweep_pending(reg)
        scheduler.refresh_locked(reg)
        current = reg.get(name)
        if current is None:
            raise jobs.not_found(name)
        if current.state.active:
            raise JobStateError(
                f"job {name} was started again meanwhile (run {current.current.run}, "
                f"{current.state.value}); nothing to do"
            )
        run = starting.new_run(current, spec.procs, backend.name, local=not backend.queues)
        fresh = replace(current, spec=spec).with_run(run)
        pending = starting.launch_run(reg, fresh, base, discovery, backend)
        try:
            reg.save()
        except BaseException:
            starting.undo([(fresh, pending)], backend)
            raise
        starting.place_envs(root, [(fresh, pending)])
    return RestartResult(fresh, kept is not None)


def _read_env(name: str, root: Path) -> dict[str, str] | None:
    """The environment captured at the job's first start, or None when none was kept."""
    try:
        return LaunchEnv.from_dict(json.loads(paths.env_path(name, root).read_bytes())).env
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise storage_error(exc, "read the job's environment file") from exc
    except (ValueError, KeyError, TypeError):
        return None


def remove_job(name: str, force: bool = False, logs: bool = False) -> Path | None:
    """Forget a finished job (``force``: stop an active one first); logs kept unless ``logs``,
    out of the way of the next job of that name: where they are kept (None: not kept)."""

    record = jobs.get_job(name)
    run = record.current
    leftovers = run.state is JobState.LOST and bool(backends.get(run.backend).leftover_pids(run))
    if record.state.active or leftovers:
        if not force:
            what = (
                "was lost but some of its processes still run"
                if leftovers
                else f"is still {record.state.value}"
            )
            raise JobStateError(f"job {name} {what}; stop it first or pass --force")
        with contextlib.suppress(JobStateError):
            stop_job(name)
    root = paths.home()
    with registry.locked(root) as reg:
        current = reg.get(name)
        if current is None:
            raise jobs.not_found(name)
        if current.state.active:
            raise JobStateError(f"job {name} was started again meanwhile; stop it first")
        reg.forget(name)
        kept = _set_aside(root, current)
    return _remove_files(kept, logs)


def clean_jobs(logs: bool = False, states: Sequence[JobState] = ()) -> list[str]:
    """Forget every finished job (of ``states`` when given); return their names."""
    root = paths.home()
    paths.check_home(root)
    scheduler.refresh(registry.load_active(root), root)  # runs that ended meanwhile count
    kept = []
    with registry.locked(root) as reg:
        # The history read once, under the lock: a lookup per name would read it N times.
        records = [r for r in reg.finished() if not states or r.state in states]
        names = [r.name for r in records]
        for record in records:
            reg.forget(record.name)
            kept.append(_set_aside(root, record))
    for folder in kept:
        _remove_files(folder, logs)
    return names


def _set_aside(root: Path, record: JobRecord) -> Path | None:
    """Under the lock, with the record forgotten: the job's folder out of the way of the next
    job of its name (a new job of that name must not inherit its log or metrics)."""
    created = parse_time(record.created_at).timestamp()
    return paths.set_aside(record.name, root, created)


def _remove_files(folder: Path | None, logs: bool) -> Path | None:
    """The kept environment always goes with the record; the whole folder with ``logs``.
    Returns the folder when it is kept."""
    if folder is None:
        return None
    with contextlib.suppress(OSError):
        (folder / paths.ENV_FILE).unlink()
    if logs:
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return folder
