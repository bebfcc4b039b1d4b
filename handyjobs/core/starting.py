"""Starting jobs: one, or a sweep all together or not at all, under one registry lock.

GPU discovery happens once, before the lock. A start that dies half-way leaves nothing
behind: its record, session and environment file go together (see :func:`sweep_pending`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from handyjobs.backends import base as backends
from handyjobs.core import booking, config, lifecycle, paths, registry, scheduler
from handyjobs.core.records import JobRecord, JobState, LaunchEnv, Run, utcnow
from handyjobs.core.spec import backend_of, default_stem, make_spec
from handyjobs.errors import (
    UsageError,
    storage_error,
)
from handyjobs.structs import frozen, replace

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from handyjobs.backends.base import Backend
    from handyjobs.core.spec import Checked, StartRequest
    from handyjobs.gpus.discovery import Discovery


def new_run(
    record: JobRecord | None, nproc: int, backend: str, local: bool = True, held: bool = False
) -> Run:
    """A fresh queued run: run 1 of a new job, or the next run of ``record``.

    ``local``: the run lives on this machine, so this boot's id dates its pids (a run on a
    cluster does not end when the machine that submitted it reboots). ``held``: it waits
    out of the queue until released (``start --hold``).
    """
    if record is not None and record.current.state.active:
        raise ValueError(f"job {record.name} still has an active run")
    return Run(
        run=1 if record is None else record.current.run + 1,
        # secrets.token_hex's bytes, without its import (hmac, random: 15 ms of every start)
        run_id=os.urandom(6).hex(),
        state=JobState.QUEUED,
        created_at=utcnow(),
        nproc=nproc,
        backend=backend,
        boot_id=paths.boot_id() if local else None,
        held=held,
    )


def start_job(req: StartRequest) -> JobRecord:
    """Check, register and launch a job; return once it is registered and its session exists."""
    return start_jobs([req])[0]


def start_jobs(
    reqs: Sequence[StartRequest], together: bool = False, parallel: int | None = None
) -> list[JobRecord]:
    """Start several jobs (a sweep) all together or not at all, under one registry lock.

    GPU discovery happens once, before the lock, for all of them. ``together``: one
    submission for all where the backend can make one (a job array), at most ``parallel``
    of them running at once (None: the group's limit in the config, if any).
    """

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
    group = backends.group_launcher(backend) if together else None
    launched: list[tuple[JobRecord, Path]] = []
    with registry.locked(root) as reg:
        sweep_pending(reg)
        scheduler.refresh_locked(reg)  # runs that ended free their GPUs
        try:
            prepared = []
            for req, one in zip(reqs, checked, strict=True):
                record = _new_record(reg, req, one, backend)
                env = dict(req.caller_env)
                if group is None:
                    pending = launch_run(reg, record, env, one.discovery, backend)
                    launched.append((record, pending))
                else:
                    prepared.append(_prepare(reg, record, env, one.discovery, backend))
            if group is not None:
                limit = parallel or _group_limit(reg.root, reqs[0].group)
                launched += _launch_together(reg, prepared, group, limit)
            reg.save()
        except BaseException:
            undo(launched, backend)
            raise
        place_envs(reg.root, launched)
    return [record for record, _ in launched]


def _new_record(
    reg: registry.Registry, req: StartRequest, one: Checked, backend: Backend
) -> JobRecord:
    """A new job's record with its first run, queued; its name must be free."""
    spec = one.spec
    name = req.name or _unique_name(reg, default_stem(spec.script, spec.module))
    existing = reg.get(name)
    if existing is not None:
        raise UsageError(
            f"a job named {name} exists ({existing.state.value}); pick another "
            f"--name or remove it with `handyjobs rm {name}`"
        )
    paths.set_aside(name, reg.root)  # no record owns it: an older job's files
    run = new_run(None, spec.procs, backend.name, local=not backend.queues, held=req.hold)
    return JobRecord(
        name=name,
        spec=spec,
        log_path=str(backend.log_path(name, reg.root)),
        created_at=run.created_at,
        runs=[run],
        git=one.git,
    )


def _group_limit(root: Path, group: str | None) -> int | None:
    """The group's parallel limit in the config (``config parallel K --group G``), if any."""
    return (config.load(root).group_parallel.get(group) or None) if group else None


def start_sweep(reqs: Sequence[StartRequest], parallel: int | None = None) -> list[JobRecord]:
    """Start a sweep's jobs (one group) all together: one submission where the backend can
    make one (a job array), with at most ``parallel`` of them running at once.

    Where runs start one by one (this machine), ``parallel`` becomes the group's limit in the
    config, as ``handyjobs config parallel K --group G`` sets it; a failed start puts the
    limit back as it was.
    """
    group = reqs[0].group if reqs else None
    backend = backends.get(backend_of(reqs))
    if parallel is None or group is None or backends.group_launcher(backend) is not None:
        return start_jobs(reqs, together=True, parallel=parallel)
    root = paths.home()
    paths.check_home(root)
    root = paths.ensure_home(root)
    before = config.load(root).group_parallel.get(group)
    config.update(root, "parallel", str(parallel), group)
    try:
        return start_jobs(reqs, together=True)
    except BaseException:
        config.update(root, "parallel", None if before is None else str(before), group)
        raise


def _unique_name(reg: registry.Registry, stem: str) -> str:
    """``STEM-N``, N counted per script (``train-1``, ``train-2``, then ``eval-1``): one past
    the highest of that stem kept."""
    return f"{stem}-{max(reg.numbers(stem), default=0) + 1}"


def launch_run(
    reg: registry.Registry,
    record: JobRecord,
    env: Mapping[str, str],
    discovery: Discovery | None,
    backend: Backend,
) -> Path:
    """Decide the current run's start (GPUs, queue), hand the runner its environment, start it.

    Runs under the registry lock; the caller saves (nothing is saved unless every runner's
    session exists) or takes everything back with :func:`undo`. Returns the pending
    environment file.
    """
    ready = _prepare(reg, record, env, discovery, backend)
    try:
        started = backend.launch(ready.request)
    except BaseException:
        ready.drop()
        raise
    return ready.started(reg, started)


@frozen
class _Ready:
    """A run about to be launched: its record (put, not saved), launch request and files."""

    record: JobRecord
    request: backends.LaunchRequest
    pending: Path
    job_dir: Path
    #: The job's folder was made for this start (a refused launch takes it away).
    fresh: bool

    def drop(self) -> None:
        """The launch failed: no environment file, and no folder of a job never saved."""
        _drop(self.pending, self.job_dir, self.fresh)

    def started(self, reg: registry.Registry, started: backends.Launched) -> Path:
        """The backend started the runner: keep its handle on the run; the pending file."""
        run = self.record.current
        run.handle, run.runner = started.handle, started.runner
        reg.put(self.record)
        return self.pending


def _launch_together(
    reg: registry.Registry,
    ready: Sequence[_Ready],
    group: backends.GroupLauncher,
    parallel: int | None,
) -> list[tuple[JobRecord, Path]]:
    """Launch the prepared runs in one submission; refused, none of them leaves anything."""
    try:
        started = group.launch_group([r.request for r in ready], parallel)
    except BaseException:
        for one in ready:
            one.drop()
        raise
    return [
        (one.record, one.started(reg, launched))
        for one, launched in zip(ready, started, strict=True)
    ]


def _prepare(
    reg: registry.Registry,
    record: JobRecord,
    env: Mapping[str, str],
    discovery: Discovery | None,
    backend: Backend,
) -> _Ready:
    """Everything of a run's start but the launch: its dependencies, its place in this
    machine's queue, its folder, log and pending environment, and the launch request."""
    name, spec, run = record.name, record.spec, record.current
    deps: dict[str, JobState | None] = {}
    after: dict[str, Run] = {}
    for dep in spec.after:
        found = reg.get(dep)
        if found is None:
            raise UsageError(f"--after {dep}: no job of that name; see `handyjobs list --all`")
        booking.refuse_cycle(name, dep, reg.records())
        # Bound to the run it waits for now: a later job of that name is not that run.
        run.after_runs[dep] = found.current.run_id
        deps[booking.dep_key(dep, run)], after[dep] = found.state, found.current
    reg.put(record)
    # A cluster's scheduler queues and places its runs itself: the run stays queued until
    # the scheduler's view or its runner says it started; handyjobs' own queue stays out of it.
    if not backend.queues:
        limits = config.load(reg.root).limits(env)
        got, wait = booking.book(record, reg.records(), discovery, deps, limits)
        if got is not None:
            lifecycle.grant(reg, name, run.run_id, got, scheduler.baseline(discovery, got))
        elif wait is not None:
            lifecycle.set_wait(reg, name, run.run_id, wait)
            _renumber_queue(reg)
    elif run.held:  # held in the scheduler's queue (the launch asks it to): say so at once
        lifecycle.set_wait(reg, name, run.run_id, booking.HELD)
    fresh = not paths.job_dir(name, reg.root).exists()
    job_dir = paths.ensure_private_dir(paths.job_dir(name, reg.root))
    pending = _write_pending(reg.root, name, run.run_id, env)
    try:
        _touch_log(Path(record.log_path))
        session = backend.session_name(name, run.run, run.run_id)
    except BaseException:
        _drop(pending, job_dir, fresh)
        raise
    argv = [sys.executable, "-m", "handyjobs.jobside.runner", str(reg.root), name, run.run_id]
    request = backends.LaunchRequest(
        name, run.run_id, session, argv, str(job_dir), spec, run.run, env, after, run.held
    )
    return _Ready(record, request, pending, job_dir, fresh)


def _drop(pending: Path, job_dir: Path, fresh: bool) -> None:
    """A start that failed: its environment file goes, and so does the folder it made (a
    refused submit leaves no folder of a job that was never saved)."""
    pending.unlink(missing_ok=True)
    if fresh:
        import shutil  # lazy: only a start that failed cleans up (shutil costs every start 2 ms)

        shutil.rmtree(job_dir, ignore_errors=True)


def _renumber_queue(reg: registry.Registry) -> None:
    """A job that joins the queue ahead of others (``--priority``) moves them back one place."""

    for place, queued in enumerate(booking.queue_order(reg.records()), start=1):
        wait = queued.current.wait
        if wait is not None and wait.position is not None and wait.position != place:
            lifecycle.set_wait(
                reg, queued.name, queued.current.run_id, replace(wait, position=place)
            )


def place_envs(root: Path, launched: Sequence[tuple[JobRecord, Path]]) -> None:
    """Move the saved runs' environments into place, still under the lock (runners read them
    only after we let go). A runner whose file did not make it fails to start and says why."""
    for record, pending in launched:
        with contextlib.suppress(OSError):
            os.replace(pending, paths.env_path(record.name, root))


def undo(launched: Sequence[tuple[JobRecord, Path]], backend: Backend) -> None:
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
