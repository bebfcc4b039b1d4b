"""The core API the CLI calls: start, list, show, stop, restart, wait, remove, clean, attach.

Each function does one user-visible thing and raises a :class:`HandyjobsError` with a line
that says what to do next. State changes go through :mod:`handyjobs.core.lifecycle`, sessions and
processes through the run's backend (:mod:`handyjobs.backends`), storage through
:mod:`handyjobs.core.registry`. GPU discovery happens outside the registry lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from handyjobs.core import paths, registry, scheduler
from handyjobs.core.records import JobRecord, JobState, LaunchEnv, Run
from handyjobs.errors import (
    GpuError,
    JobNotFound,
    JobStateError,
    TimeoutExpired,
    UsageError,
    storage_error,
)

if TYPE_CHECKING:
    from handyjobs.backends.base import Backend
    from handyjobs.core.spec import StartRequest
    from handyjobs.gpus.discovery import Discovery

# The writers below import backends, lifecycle and spec inside the functions that need them:
# `handyjobs list` (the command people run in `watch`) must not pay for those imports.

#: Seconds ``stop`` waits after SIGTERM before it SIGKILLs what is left.
DEFAULT_GRACE_S = 10.0
#: Seconds a runner gets to record the outcome once its job's processes are gone.
RUNNER_EXIT_S = 10.0


def not_found(name: str) -> JobNotFound:
    """The one error for a name that has no record."""
    from handyjobs.views import render

    return JobNotFound(f"no job named {render.printable(name)}; see `handyjobs list --all`")


# ---- start ---------------------------------------------------------------------------------


def start_job(req: StartRequest) -> JobRecord:
    """Check, register and launch a job; return once it is registered and its session exists."""
    return start_jobs([req])[0]


def start_jobs(reqs: Sequence[StartRequest]) -> list[JobRecord]:
    """Start several jobs (a sweep) all together or not at all, under one registry lock.

    GPU discovery happens once, before the lock, for all of them.
    """
    from handyjobs.backends import base as backends
    from handyjobs.core import lifecycle
    from handyjobs.core.spec import backend_of, default_stem, make_spec

    # A sweep goes to one place: the backend its requests' options send it to.
    backend = backends.get(backend_of(reqs))
    backend.check()
    root = paths.home()
    paths.check_home(root)
    checked = []
    discovery: Discovery | None = None
    for req in reqs:
        one = make_spec(req, root, discovery)
        discovery = discovery or one.discovery
        checked.append(one)
    root = paths.ensure_home(root)
    launched: list[tuple[JobRecord, Path]] = []
    with registry.locked(root) as reg:
        sweep_pending(reg)
        scheduler.refresh_locked(reg)  # runs that ended free their GPUs
        try:
            for req, one in zip(reqs, checked, strict=True):
                spec = one.spec
                name = req.name or _unique_name(reg, default_stem(spec.script, spec.module))
                existing = reg.get(name)
                if existing is not None:
                    raise UsageError(
                        f"a job named {name} exists ({existing.state.value}); pick another "
                        f"--name or remove it with `handyjobs rm {name}`"
                    )
                run = lifecycle.new_run(None, spec.procs, backend.name, local=not backend.queues)
                record = JobRecord(
                    name=name,
                    spec=spec,
                    log_path=str(backend.log_path(name, root)),
                    created_at=run.created_at,
                    runs=[run],
                    git=one.git,
                )
                pending = _launch(reg, record, dict(req.caller_env), one.discovery, backend)
                launched.append((record, pending))
            reg.save()
        except BaseException:
            _undo(launched, backend)
            raise
        _place_envs(reg.root, launched)
    return [record for record, _ in launched]


def _unique_name(reg: registry.Registry, stem: str) -> str:
    while True:
        name = f"{stem}-{reg.take_id()}"
        if not reg.exists(name):
            return name


def _launch(
    reg: registry.Registry,
    record: JobRecord,
    env: Mapping[str, str],
    discovery: Discovery | None,
    backend: Backend,
) -> Path:
    """Decide the current run's start (GPUs, queue), hand the runner its environment, start it.

    Runs under the registry lock; the caller saves with :func:`_commit` (nothing is saved
    unless every runner's session exists) or takes everything back with :func:`_undo`.
    Returns the pending environment file.
    """
    from handyjobs.backends import base as backends
    from handyjobs.core import booking, config, lifecycle

    name, spec, run = record.name, record.spec, record.current
    deps: dict[str, JobState | None] = {}
    after: dict[str, Run] = {}
    for dep in spec.after:
        found = reg.get(dep)
        if found is None:
            raise UsageError(f"--after {dep}: no job of that name; see `handyjobs list --all`")
        deps[dep], after[dep] = found.state, found.current
    reg.put(record)
    # A cluster's scheduler queues and places its runs itself: the run stays queued until
    # the scheduler's view or its runner says it started; handyjobs' own queue stays out of it.
    if not backend.queues:
        limits = config.load(reg.root).limits(env)
        got, wait = booking.book(record, reg.records(), discovery, deps, limits)
        if got is not None:
            lifecycle.grant(reg, name, run.run_id, got, lifecycle.baseline(discovery, got))
        elif wait is not None:
            lifecycle.set_wait(reg, name, run.run_id, wait)
            _renumber_queue(reg)
    job_dir = paths.ensure_private_dir(paths.job_dir(name, reg.root))
    pending = _write_pending(reg.root, name, run.run_id, env)
    try:
        _touch_log(Path(record.log_path))
        session = backend.session_name(name, run.run, run.run_id)
        argv = [sys.executable, "-m", "handyjobs.jobside.runner", str(reg.root), name, run.run_id]
        started = backend.launch(
            backends.LaunchRequest(
                name, run.run_id, session, argv, str(job_dir), spec, run.run, env, after
            )
        )
    except BaseException:
        pending.unlink(missing_ok=True)
        raise
    run.handle, run.runner = started.handle, started.runner
    reg.put(record)
    return pending


def _renumber_queue(reg: registry.Registry) -> None:
    """A job that joins the queue ahead of others (``--priority``) moves them back one place."""
    from handyjobs.core import booking, lifecycle

    for place, queued in enumerate(booking.queue_order(reg.records()), start=1):
        wait = queued.current.wait
        if wait is not None and wait.position is not None and wait.position != place:
            lifecycle.set_wait(
                reg, queued.name, queued.current.run_id, replace(wait, position=place)
            )


def _place_envs(root: Path, launched: Sequence[tuple[JobRecord, Path]]) -> None:
    """Move the saved runs' environments into place, still under the lock (runners read them
    only after we let go). A runner whose file did not make it fails to start and says why."""
    for record, pending in launched:
        with contextlib.suppress(OSError):
            os.replace(pending, paths.env_path(record.name, root))


def _undo(launched: Sequence[tuple[JobRecord, Path]], backend: Backend) -> None:
    """A start that failed part-way: end the runners it made and drop their environments.

    Their records were never saved, so their runners would start nothing anyway.
    """
    for record, pending in launched:
        with contextlib.suppress(Exception):
            backend.end_runner(record.current)
        pending.unlink(missing_ok=True)


def _write_pending(root: Path, name: str, run_id: str, env: Mapping[str, str]) -> Path:
    """The caller's environment in a private file, before the record that owns it is saved."""
    folder = paths.ensure_private_dir(paths.pending_dir(root))
    path = folder / f"{run_id}.env.json"
    data = json.dumps(LaunchEnv(name, dict(env)).to_dict()).encode()
    try:
        paths.write_atomic(path, data)
    except OSError as exc:
        raise storage_error(exc, "write the job's environment file") from exc
    return path


def _touch_log(path: Path) -> None:
    """Create the log (0600) so that ``logs`` finds it from the first moment."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    except OSError as exc:
        raise storage_error(exc, "create the log") from exc


def sweep_pending(reg: registry.Registry) -> None:
    """Environment files left by starts that were killed: finish their move, or delete them.

    Under the lock no start is in the middle of its own, so every file here is orphaned:
    one whose run was saved (killed just before the move) is moved into place; any other
    holds a caller's environment that no record owns, and is deleted.
    """
    folder = paths.pending_dir(reg.root)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for entry in names:
        path = folder / entry
        run_id = entry.split(".", 1)[0]
        owner = None
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            owner = LaunchEnv.from_dict(json.loads(path.read_bytes())).name
        record = reg.get(owner) if owner else None
        if record is not None and record.current.run_id == run_id and record.state.active:
            with contextlib.suppress(OSError):
                os.replace(path, paths.env_path(record.name, reg.root))
                continue
        with contextlib.suppress(OSError):
            path.unlink()


# ---- reading -------------------------------------------------------------------------------


def _sort_key(record: JobRecord) -> str:
    return record.current.started_at or record.current.created_at


def list_jobs(
    all_jobs: bool = False, states: Sequence[JobState] = (), recent: int = 20
) -> tuple[list[JobRecord], int]:
    """Jobs newest first: running and queued plus the ``recent`` latest finished, or all.

    Returns the jobs and the number of records kept.
    """
    root = paths.home()
    paths.check_home(root)
    if all_jobs or states:
        records = registry.load_all(root)
        total = len(records)
    else:
        records, total = registry.load_recent(root, recent)
    records = scheduler.refresh(records, root)
    if states:
        records = [r for r in records if r.state in states]
    elif not all_jobs:
        done = sorted((r for r in records if not r.state.active), key=_sort_key, reverse=True)
        records = [r for r in records if r.state.active] + done[:recent]
    return sorted(records, key=_sort_key, reverse=True), total


def peek_jobs(recent: int = 20) -> list[JobRecord]:
    """What ``list_jobs()`` shows, reconciled in memory only: never writes the registry.

    For views that look every second (``top``): what changed is left for the next writer.
    """
    from handyjobs.backends import base as backends
    from handyjobs.core import lifecycle

    root = paths.home()
    paths.check_home(root)
    records, _ = registry.load_recent(root, recent)
    scratch = lifecycle.Scratch(records)
    for record in records:
        if record.state.active:
            lifecycle.reconcile(scratch, record, backends.get(record.current.backend), root)
    records = [scratch.records[r.name] for r in records]
    done = sorted((r for r in records if not r.state.active), key=_sort_key, reverse=True)
    records = [r for r in records if r.state.active] + done[:recent]
    return sorted(records, key=_sort_key, reverse=True)


def get_job(name: str) -> JobRecord:
    """One job's record, reconciled with what really runs."""
    root = paths.home()
    paths.check_home(root)
    record = registry.load_one(name, root)
    if record is None:
        raise not_found(name)
    return scheduler.refresh([record], root)[0]


def with_final_view(record: JobRecord) -> JobRecord:
    """A cluster run that ended before its scheduler was asked how: asked once now (``show``).

    The job side records its own outcome, often before the scheduler has moved on; what it says
    of the end (its end state, its exit code) is looked up here for the reader, not stored,
    since ended records live in the append-only history.
    """
    run = record.current
    if run.state.active or not run.handle.get("job_id"):
        return record
    if run.cluster is not None and not run.cluster.verdict.active:
        return record
    from handyjobs.backends import base as backends

    view = backends.get(run.backend).observe(run)
    if view is None or view.verdict.active:
        return record
    return replace(record, runs=[*record.runs[:-1], replace(run, cluster=view)])


def log_file(name: str) -> tuple[JobRecord, Path]:
    """The job's record and its log, which must exist (``logs`` on a deleted one says so)."""
    record = get_job(name)
    path = Path(record.log_path)
    if not path.is_file():
        raise JobStateError(
            f"the log of job {name} is missing ({path}); it was deleted or never written"
        )
    return record, path


def rank_log_file(name: str, rank: int, must_exist: bool = True) -> tuple[JobRecord, Path]:
    """The job's record and rank ``rank``'s own log (a job of one process: its only log)."""
    from handyjobs.views import render

    record = get_job(name)
    procs = record.spec.procs
    if not 0 <= rank < procs:
        raise UsageError(render.no_such_rank(name, rank, procs))
    if procs == 1:
        return log_file(name)
    path = Path(paths.rank_log(record.log_path, rank))
    if must_exist and not path.is_file():
        raise JobStateError(render.rank_log_missing(record, rank, path))
    return record, path


def ended_check(record: JobRecord) -> Callable[[], bool]:
    """A cheap "has this run ended?" for ``logs -f``: the runner's status file, then the record."""
    from handyjobs.backends import base as backends
    from handyjobs.core import lifecycle

    root = paths.home()
    run = record.current
    backend = backends.get(run.backend)

    def ended() -> bool:
        status = lifecycle.read_status(record.name, run.run_id, root)
        if status is not None and (status.outcome is not None or status.lost is not None):
            return True
        if status is not None and backend.runner_alive(replace(run, runner=status.runner)):
            return False
        fresh = get_job(record.name).run_by_id(run.run_id)
        return fresh is None or not fresh.state.active

    return ended


# ---- stop ----------------------------------------------------------------------------------


@dataclass(frozen=True)
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


def stop_job(name: str, grace_s: float = DEFAULT_GRACE_S) -> StopResult:
    """End every process of a job's current run (SIGTERM, grace, SIGKILL); mark it stopped.

    Only processes that carry the run's marker are signalled. A lost run's leftovers are
    ended too. The run is addressed by its id: a restart racing with this stop is untouched.
    """
    from handyjobs.backends import base as backends
    from handyjobs.core import lifecycle

    root = paths.home()
    record = get_job(name)
    run = record.current
    backend = backends.get(run.backend)
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
    with registry.locked(root) as reg:
        lifecycle.request_stop(reg, name, run_id)
        current = reg.get(name)
        mine = None if current is None else current.run_by_id(run_id)
        if mine is None or not mine.state.active:
            state = "was removed" if mine is None else mine.state.value
            raise JobStateError(f"job {name} is not running (it {state}); nothing to stop")
        run = mine
    was_queued = run.state is JobState.QUEUED
    pids = set(backend.terminate(run, grace_s).pids)
    left: tuple[int, ...] = ()
    # The runner records the outcome and exits; a queued job that got its GPUs just as we
    # stopped it may start its process meanwhile: end that too.
    deadline = time.monotonic() + RUNNER_EXIT_S
    while backend.runner_alive(run) and time.monotonic() < deadline:
        if backend.leftover_pids(run):
            ended = backend.terminate(run, grace_s)
            pids.update(ended.pids)
            left = ended.left
        time.sleep(0.02)
    if backend.runner_alive(run):
        backend.end_runner(run)  # hung: it will never record; we do, below
    with registry.locked(root) as reg:
        scheduler.refresh_locked(reg)  # folds the runner's "stopped"
        lifecycle.cancel(reg, name, run_id)  # the runner went without recording
        record = reg.get(name) or record
    with contextlib.suppress(GpuError, UsageError):
        scheduler.schedule_pass(root)  # queued jobs may have the GPUs now
    _survivors(name, left)
    stopped = record.run_by_id(run_id) or run
    note = _check_gpus_released(name, stopped, pids) if stopped.gpus else None
    return StopResult(record, run_id, tuple(sorted(pids)), was_queued, gpu_note=note)


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
    from handyjobs.gpus import discovery as gpumod

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


# ---- wait, restart, remove ------------------------------------------------------------------


def wait_job(name: str, timeout_s: float | None = None, poll_s: float = 0.2) -> JobRecord:
    """Block until the job's current run ends; return its final record."""
    return next(iter(wait_jobs([name], timeout_s, poll_s)))[1]


def wait_jobs(
    names: Sequence[str], timeout_s: float | None = None, poll_s: float = 0.2
) -> Iterator[tuple[str, JobRecord]]:
    """Yield each job's final record as it ends (in the order they end).

    Every name must exist when called. Raises :class:`TimeoutExpired` (exit code 124) when
    ``timeout_s`` runs out with jobs still active.
    """
    waiting = {name: get_job(name) for name in dict.fromkeys(names)}  # not found: raise now
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while waiting:
        for name in list(waiting):
            record = get_job(name) if waiting[name].state.active else waiting[name]
            if not record.state.active:
                del waiting[name]
                yield name, record
        if not waiting:
            return
        if deadline is not None and time.monotonic() > deadline:
            first = next(iter(waiting))
            more = f" (and {len(waiting) - 1} more)" if len(waiting) > 1 else ""
            raise TimeoutExpired(
                f"job {first}{more} is still {get_job(first).state.value} after "
                f"{timeout_s:g}s; wait longer or look at it with `handyjobs logs`"
            )
        time.sleep(poll_s)


@dataclass(frozen=True)
class RestartResult:
    """The record after ``restart``, and whether the first start's environment was reused."""

    record: JobRecord
    env_reused: bool


def restart_job(
    name: str,
    env: Sequence[str] = (),
    grace_s: float = DEFAULT_GRACE_S,
    caller_env: Mapping[str, str] | None = None,
    args: Sequence[str] | None = None,
) -> RestartResult:
    """Start the job's spec again as a new run, stopping the current one first if it runs.

    The run gets the environment captured at the job's first start (``env`` items, K=V,
    change single variables); only a job recorded before that was kept uses the caller's.
    ``args``, when given, replace the script's arguments from now on.
    """
    from handyjobs.backends import base as backends
    from handyjobs.core import lifecycle
    from handyjobs.core.spec import parse_env

    overrides = parse_env(env)
    record = get_job(name)
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
        from handyjobs.gpus import discovery as gpumod

        discovery = gpumod.discover(base)
    with registry.locked(root) as reg:
        sweep_pending(reg)
        scheduler.refresh_locked(reg)
        current = reg.get(name)
        if current is None:
            raise not_found(name)
        if current.state.active:
            raise JobStateError(
                f"job {name} was started again meanwhile (run {current.current.run}, "
                f"{current.state.value}); nothing to do"
            )
        run = lifecycle.new_run(current, spec.procs, backend.name, local=not backend.queues)
        fresh = replace(current, spec=spec).with_run(run)
        pending = _launch(reg, fresh, base, discovery, backend)
        try:
            reg.save()
        except BaseException:
            _undo([(fresh, pending)], backend)
            raise
        _place_envs(root, [(fresh, pending)])
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


def remove_job(name: str, force: bool = False, logs: bool = False) -> None:
    """Forget a finished job (``force``: stop an active one first); logs kept unless ``logs``."""
    from handyjobs.backends import base as backends

    record = get_job(name)
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
            raise not_found(name)
        if current.state.active:
            raise JobStateError(f"job {name} was started again meanwhile; stop it first")
        reg.forget(name)
    _remove_files(root, name, logs)


def clean_jobs(logs: bool = False, states: Sequence[JobState] = ()) -> list[str]:
    """Forget every finished job (of ``states`` when given); return their names."""
    root = paths.home()
    paths.check_home(root)
    records = scheduler.refresh(registry.load_all(root), root)
    names = [r.name for r in records if not r.state.active and (not states or r.state in states)]
    if not names:
        return []
    with registry.locked(root) as reg:
        names = [n for n in names if n not in reg.active]
        for name in names:
            reg.forget(name)
    for name in names:
        _remove_files(root, name, logs)
    return names


def _remove_files(root: Path, name: str, logs: bool) -> None:
    """The kept environment always goes with the record; the whole folder with ``logs``."""
    with contextlib.suppress(OSError):
        paths.env_path(name, root).unlink()
    if logs:
        import shutil

        shutil.rmtree(paths.job_dir(name, root), ignore_errors=True)


# ---- attach and GPUs -----------------------------------------------------------------------


def attach_argv(name: str) -> list[str]:
    """The command that attaches the caller's terminal to a live job's session."""
    from handyjobs.backends import base as backends

    record = get_job(name)
    run = record.current
    backend = backends.get(run.backend)
    if not run.state.active or not backend.session_alive(run):
        raise JobStateError(
            f"job {name} has ended ({record.state.value}); read its output with "
            f"`handyjobs logs {name}`"
        )
    return backend.attach_argv(run)


def gpu_overview(env: Mapping[str, str] | None = None) -> tuple[Discovery, dict[int, str]]:
    """GPU discovery plus which running job holds each GPU."""
    from handyjobs.core import booking
    from handyjobs.gpus import discovery as gpus

    discovery = gpus.discover(env)  # outside any lock
    records, _ = list_jobs()
    return discovery, booking.held_gpus(records)


# ---- groups, send --------------------------------------------------------------------------


def names(
    group: str | None = None, states: Sequence[JobState] = (), every: bool = False
) -> list[str]:
    """Job names for the ``--group`` and ``--all`` forms: of ``group`` (or every job when
    ``every``), in ``states`` when given, oldest first."""
    records, _ = list_jobs(all_jobs=True)
    picked = [
        r.name
        for r in reversed(records)
        if (every or r.spec.group == group) and (not states or r.state in states)
    ]
    return picked


def send_text(name: str, text: str) -> JobRecord:
    """Type a line into a running job's terminal (a prompt, pdb); return its record."""
    from handyjobs.backends import base as backends

    record = get_job(name)
    run = record.current
    if run.state is JobState.QUEUED or (run.state.active and run.main is None):
        raise JobStateError(f"job {name} has not started yet; send once it runs")
    if not run.state.active:
        raise JobStateError(f"job {name} has ended ({run.state.value}); nothing reads its input")
    backends.get(run.backend).send(run, text)
    return record
