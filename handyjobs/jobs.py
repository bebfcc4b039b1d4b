"""The core API the CLI calls: start, list, show, stop, restart, wait, remove, clean."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from handyjobs import paths, registry, tmux
from handyjobs.errors import GpuError, JobNotFound, JobStateError, UsageError
from handyjobs.records import NAME_RE, JobRecord, JobSpec, JobState, Run, utcnow

if TYPE_CHECKING:
    from handyjobs.gpus import Discovery

#: Seconds ``stop`` waits after SIGTERM before it SIGKILLs what is left.
DEFAULT_GRACE_S = 10.0


@dataclass(frozen=True)
class StartRequest:
    """What ``handyjobs start`` was asked, before any of it is checked."""

    script: str
    args: Sequence[str] = ()
    module: bool = False
    name: str | None = None
    gpus: str | None = None
    ngpus: int | None = None
    cpu: bool = False
    nproc: int | None = None
    env: Sequence[str] = ()
    cwd: str | None = None
    python: str | None = None
    wait: bool = False
    force: bool = False
    caller_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


def _not_found(*names: str) -> JobNotFound:
    return JobNotFound(f"no job named {', '.join(names)}; see `handyjobs list --all`")


# ---- start -----------------------------------------------------------------------------------


def _check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UsageError(
            f"invalid job name {name!r}: use 1 to 64 of A-Z a-z 0-9 _ - (tmux rewrites . and :)"
        )
    return name


def _default_stem(script: str, module: bool) -> str:
    stem = script.rsplit(".", 1)[-1] if module else Path(script).stem
    clean = "".join(c if c.isalnum() or c in "_-" else "-" for c in stem).strip("-") or "job"
    return clean[:48]


def _find_python(requested: str | None, env: Mapping[str, str], cwd: Path) -> str:
    """The interpreter the job runs with: ``--python``, else ``python`` on the caller's PATH."""
    path = env.get("PATH", os.defpath)
    if requested:
        candidate = Path(requested).expanduser()
        if "/" in requested:
            candidate = candidate if candidate.is_absolute() else cwd / candidate
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        else:
            found = shutil.which(requested, path=path)
            if found:
                return found
        raise UsageError(f"--python {requested}: no such executable; give a path or a name on PATH")
    for name in ("python", "python3"):
        found = shutil.which(name, path=path)
        if found:
            return found
    return sys.executable


def _parse_env(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not (key.replace("_", "a").isalnum() and not key[0].isdigit()):
            raise UsageError(f"--env {item!r}: write it as KEY=VALUE, KEY a variable name")
        out[key] = value
    return tuple(sorted(out.items()))


def _git_info(directory: Path) -> dict[str, object] | None:
    """Commit and dirty flag of the repository holding the script, when there is one."""
    try:
        head = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(directory), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def _caller_cwd(env: Mapping[str, str]) -> str:
    """The caller's directory, spelled as its shell does ($PWD keeps symlinks) when it is one."""
    here = os.getcwd()
    pwd = env.get("PWD")
    try:
        if pwd and os.path.samefile(pwd, here):
            return pwd
    except OSError:
        pass
    return here


def make_spec(req: StartRequest) -> JobSpec:
    """Check a start request and turn it into a spec; every problem is a one-line UsageError."""
    cwd = Path(req.cwd or _caller_cwd(req.caller_env)).expanduser()
    if not cwd.is_absolute():
        cwd = Path(os.getcwd()) / cwd
    if not cwd.is_dir():
        raise UsageError(f"--cwd {cwd}: no such directory")
    if req.name is not None:
        _check_name(req.name)
    if req.nproc is not None and req.nproc < 1:
        raise UsageError(f"--nproc {req.nproc}: give at least 1 process")
    if req.ngpus is not None and req.ngpus < 1:
        raise UsageError(f"--ngpus {req.ngpus}: ask for at least 1 GPU, or use --cpu")
    if req.cpu and (req.gpus is not None or req.ngpus is not None):
        raise UsageError("--cpu cannot be combined with --gpus/--ngpus; pick one")
    if req.gpus is not None and req.ngpus is not None:
        raise UsageError("--gpus and --ngpus both given; pick GPUs by number or by count")
    if req.force and req.gpus is None:
        raise UsageError("--force overrides checks on GPUs you name: use it with --gpus")
    if req.wait and req.gpus is None and req.ngpus is None:
        raise UsageError("--wait queues for GPUs: give --gpus or --ngpus with it")
    if req.module:
        script = req.script
        if not script or not all(part.isidentifier() for part in script.split(".")):
            raise UsageError(f"-m {script!r}: not a module name (like pkg.train)")
    else:
        path = Path(req.script).expanduser()
        path = path if path.is_absolute() else cwd / path
        if not path.is_file():
            raise UsageError(f"script {req.script} not found in {cwd}; check the path or --cwd")
        script = str(path)
    from handyjobs import gpus as gpumod  # only start with GPUs needs discovery

    gpu_tokens = gpumod.parse_gpu_spec(req.gpus) if req.gpus is not None else None
    resolved: tuple[int, ...] | None = None
    if gpu_tokens is not None:
        discovery = gpumod.discover(req.caller_env)
        resolved = tuple(gpumod.resolve_gpus(gpu_tokens, discovery))
    return JobSpec(
        script=script,
        args=tuple(req.args),
        module=req.module,
        cwd=str(cwd),
        python=_find_python(req.python, req.caller_env, cwd),
        gpus=resolved,
        ngpus=req.ngpus,
        cpu=req.cpu,
        nproc=req.nproc,
        env=_parse_env(req.env),
        wait=req.wait,
        force=req.force,
    )


def start_job(req: StartRequest) -> JobRecord:
    """Check, register and launch a job; return once it is registered and its session exists."""
    tmux.tmux_binary()
    spec = make_spec(req)
    git = _git_info(Path(spec.script).parent if not spec.module else Path(spec.cwd))
    root = paths.home()
    with registry.locked(root) as reg:
        name = req.name or _unique_name(reg, _default_stem(spec.script, spec.module))
        if name in reg.jobs:
            raise UsageError(
                f"a job named {name} exists ({reg.jobs[name].state.value}); pick another "
                f"--name or remove it with `handyjobs rm {name}`"
            )
        if tmux.has_session(name):
            raise UsageError(f"a tmux session named {name} exists already; pick another --name")
        run = Run(
            run=1,
            run_id=_new_run_id(),
            state=JobState.QUEUED,
            created_at=utcnow(),
            nproc=spec.procs,
        )
        record = JobRecord(
            name=name,
            spec=spec,
            session=name,
            log_path=str(paths.log_path(name, root)),
            created_at=run.created_at,
            runs=[run],
            git=git,
        )
        _launch(reg, record, req.caller_env, root)
    return record


def _new_run_id() -> str:
    import secrets  # only start and restart need it; list should not pay for the import

    return secrets.token_hex(6)


def _unique_name(reg: registry.Registry, stem: str) -> str:
    sessions = tmux.list_sessions()
    while True:
        name = f"{stem}-{reg.take_id()}"
        if name not in reg.jobs and name not in sessions:
            return name


def _launch(
    reg: registry.Registry, record: JobRecord, caller_env: Mapping[str, str], root: Path
) -> None:
    """Book GPUs for the record's current run, hand the runner its launch file, open tmux.

    Runs under the registry lock; nothing is saved unless the tmux session was created.
    """
    spec, run = record.spec, record.current
    refresh_locked(reg, root)
    reg.put(record, touch=True)
    if spec.gpus is not None or spec.ngpus is not None:
        from handyjobs import booking
        from handyjobs import gpus as gpumod

        policy = booking.Policy.from_env(caller_env)
        if spec.gpus is not None:
            booking.check_allowed(spec.gpus, policy)
        discovery = gpumod.discover(caller_env)
        got = booking.book(reg, discovery, policy, record)
        if got is None:
            run.waiting_for = booking.explain(reg, discovery, policy, spec, record.name)
        else:
            run.state, run.gpus = JobState.RUNNING, got
    else:
        run.state = JobState.RUNNING
    job_dir = paths.ensure_private_dir(paths.job_dir(record.name, root))
    launch_file = paths.launch_env_path(record.name, run.run_id, root)
    paths.write_atomic(
        launch_file,
        json.dumps(
            {
                "name": record.name,
                "run": run.run,
                "run_id": run.run_id,
                "spec": spec.to_dict(),
                "env": dict(caller_env),
                "gpus": None if run.state is JobState.QUEUED else list(run.gpus),
                "booked_gpus": spec.gpus is not None or spec.ngpus is not None,
                "log_path": record.log_path,
            }
        ).encode(),
    )
    runner = [sys.executable, "-m", "handyjobs.runner", str(root), record.name, run.run_id]
    try:
        tmux.new_session(record.session, runner, cwd=str(job_dir))
    except BaseException:
        launch_file.unlink(missing_ok=True)
        raise


# ---- reading ---------------------------------------------------------------------------------


def refresh_locked(reg: registry.Registry, root: Path) -> None:
    """Reconcile every active record of a locked registry (ended jobs free their GPUs)."""
    active = [r for r in reg.jobs.values() if r.state.active]
    for record in registry.reconcile(active, tmux.list_sessions, root):
        reg.put(record)


def _refresh(records: list[JobRecord], root: Path) -> list[JobRecord]:
    """Reconcile records read without the lock; write back under the lock only if needed."""
    active = [r for r in records if r.state.active]
    if not active:
        return records
    if not registry.reconcile(active, tmux.list_sessions, root):
        return records
    names = {r.name for r in records}
    with registry.locked(root) as reg:
        refresh_locked(reg, root)
        fresh = {n: reg.jobs[n] for n in names if n in reg.jobs}
    return [fresh[r.name] for r in records if r.name in fresh]


def _sort_key(record: JobRecord) -> str:
    return record.current.started_at or record.current.created_at


def list_jobs(
    all_jobs: bool = False, states: Sequence[JobState] = (), recent: int = 20
) -> tuple[list[JobRecord], int]:
    """Jobs newest first: running and queued plus the ``recent`` latest finished, or all.

    Returns the jobs and the number of records in the registry.
    """
    root = paths.home()
    if all_jobs or states:
        reg = registry.load(root)
        records, total = list(reg.jobs.values()), len(reg.jobs)
    else:
        records, total = registry.load_recent(root, recent)
    records = _refresh(records, root)
    if states:
        records = [r for r in records if r.state in states]
    elif not all_jobs:
        done = sorted((r for r in records if not r.state.active), key=_sort_key, reverse=True)
        records = [r for r in records if r.state.active] + done[:recent]
    return sorted(records, key=_sort_key, reverse=True), total


def get_job(name: str) -> JobRecord:
    """One job's record, reconciled with what really runs."""
    root = paths.home()
    record = registry.load_one(name, root)
    if record is None:
        raise _not_found(name)
    return _refresh([record], root)[0]


def ended_check(record: JobRecord) -> Callable[[], bool]:
    """A cheap "has this run ended?" for ``logs -f``: the runner's status file, then the record."""
    root = paths.home()

    def ended() -> bool:
        status = registry.read_status(record, root)
        if status and status.get("ended_at"):
            return True
        if status and registry.runner_alive(status.get("pids", {}).get("runner")):
            return False
        return not get_job(record.name).state.active

    return ended


# ---- stop, wait, restart, remove ---------------------------------------------------------------


@dataclass(frozen=True)
class StopResult:
    """What ``stop`` did: the record afterwards and the pids it ended."""

    record: JobRecord
    pids: tuple[int, ...]
    was_queued: bool


def stop_job(name: str, grace_s: float = DEFAULT_GRACE_S) -> StopResult:
    """End every process of a job (SIGTERM, grace period, SIGKILL) and mark it ``stopped``."""
    from handyjobs import procs

    root = paths.home()
    with registry.locked(root) as reg:
        record = reg.jobs.get(name)
        if record is None:
            raise _not_found(name)
        refresh_locked(reg, root)
        record = reg.jobs[name]
        if not record.state.active:
            raise JobStateError(
                f"job {name} is not running (it {record.state.value}); nothing to stop"
            )
        run = record.current
        run.stop_requested = True
        was_queued = run.state is JobState.QUEUED
        reg.put(record)
    status = registry.read_status(record, root) or {}
    pids = {**run.pids, **status.get("pids", {})}
    runner_pid, main_pid = pids.get("runner"), pids.get("main")
    seen: set[int] = set()
    left: set[int] = set()
    if not was_queued or main_pid:
        seen, left = procs.terminate(run.run_id, runner_pid, main_pid, grace_s=grace_s)
    # The runner records the outcome and exits, which ends the session; give it a moment.
    # A queued job that got its GPUs just as we stopped it may start its process meanwhile:
    # end that too.
    deadline = time.monotonic() + 5.0
    while registry.runner_alive(runner_pid) and time.monotonic() < deadline:
        if procs.job_pids(run.run_id, runner_pid):
            more, still = procs.terminate(run.run_id, runner_pid, None, grace_s=grace_s)
            seen |= more
            left |= still
        time.sleep(0.02)
    tmux.kill_session(record.session)  # a queued job's runner, or one that hung
    with registry.locked(root) as reg:
        record = reg.jobs[name]
        refresh_locked(reg, root)
        run = record.current
        if run.state is not JobState.STOPPED:
            # The runner was gone before it could write (a queued job) or wrote "failed"
            # just before our flag landed: either way the user stopped it.
            run.state = JobState.STOPPED
            run.ended_at = run.ended_at or utcnow()
            reg.put(record)
    if left:
        raise JobStateError(
            f"job {name}: processes {', '.join(map(str, sorted(left)))} survived SIGKILL; "
            "check them with `ps -p`"
        )
    if run.gpus:
        _check_gpus_released(name, run.gpus, seen)
    return StopResult(record, tuple(sorted(seen)), was_queued)


def _check_gpus_released(name: str, gpu_ids: Sequence[int], pids: set[int]) -> None:
    """Report (by pid) any process of the job that a GPU still lists after ``stop``."""
    from handyjobs import gpus as gpumod

    deadline = time.monotonic() + 5.0
    while True:
        on_gpu = gpumod.compute_pids(gpumod.discover())
        leftover = sorted(p for p in pids if p in on_gpu)
        if not leftover or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if leftover:
        raise GpuError(
            f"job {name} stopped, but GPU processes {', '.join(map(str, leftover))} are still "
            "listed by the driver; check `handyjobs gpus` and kill them by pid"
        )


def wait_job(name: str, timeout_s: float | None = None, poll_s: float = 0.2) -> JobRecord:
    """Block until the job ends; return its final record."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        record = get_job(name)
        if not record.state.active:
            return record
        if deadline is not None and time.monotonic() > deadline:
            raise JobStateError(f"job {name} is still {record.state.value} after {timeout_s:g}s")
        time.sleep(poll_s)


def restart_job(
    name: str, caller_env: Mapping[str, str] | None = None, grace_s: float = DEFAULT_GRACE_S
) -> JobRecord:
    """Start the job's spec again as a new run (stopping the current one first if it runs)."""
    tmux.tmux_binary()
    if get_job(name).state.active:
        stop_job(name, grace_s)
    root = paths.home()
    env = dict(os.environ) if caller_env is None else dict(caller_env)
    deadline = time.monotonic() + 5.0
    while tmux.has_session(name) and time.monotonic() < deadline:
        time.sleep(0.02)  # the old runner is writing its last lines
    tmux.kill_session(name)
    with registry.locked(root) as reg:
        record = reg.jobs.get(name)
        if record is None:
            raise _not_found(name)
        if record.state.active:
            raise JobStateError(f"job {name} started again meanwhile; nothing to do")
        run = Run(
            run=record.current.run + 1,
            run_id=_new_run_id(),
            state=JobState.QUEUED,
            created_at=utcnow(),
            nproc=record.spec.procs,
        )
        record = record.with_run(run)
        _launch(reg, record, env, root)
    return record


def remove_jobs(names: Sequence[str], force: bool = False, logs: bool = False) -> list[str]:
    """Remove finished jobs from the registry (``force``: stop active ones first)."""
    root = paths.home()
    reg = registry.load(root)
    missing = [n for n in names if n not in reg.jobs]
    if missing:
        raise _not_found(*missing)
    records = _refresh([reg.jobs[n] for n in names], root)
    active = [r.name for r in records if r.state.active]
    if active and not force:
        raise JobStateError(
            f"job {', '.join(active)} is still active; stop it first or pass --force"
        )
    for name in active:
        with contextlib.suppress(JobStateError):  # it may have ended meanwhile
            stop_job(name)
    with registry.locked(root) as reg:
        _forget(reg, root, [n for n in names if n in reg.jobs], logs)
    return list(names)


def clean_jobs(logs: bool = False, states: Sequence[JobState] = ()) -> list[str]:
    """Remove every finished job (of ``states`` when given)."""
    root = paths.home()
    records = _refresh(list(registry.load(root).jobs.values()), root)
    names = [r.name for r in records if not r.state.active and (not states or r.state in states)]
    if not names:
        return []
    with registry.locked(root) as reg:
        names = [n for n in names if n in reg.jobs and not reg.jobs[n].state.active]
        _forget(reg, root, names, logs)
    return names


def _forget(reg: registry.Registry, root: Path, names: Sequence[str], logs: bool) -> None:
    """Drop records from a locked registry; with ``logs``, their folders too."""
    for name in names:
        reg.remove(name)
        if logs:
            shutil.rmtree(paths.job_dir(name, root), ignore_errors=True)


def attach_argv(name: str) -> list[str]:
    """The tmux command that attaches the caller's terminal to a live job."""
    record = get_job(name)
    if not record.state.active or not tmux.has_session(record.session):
        raise JobStateError(
            f"job {name} has ended ({record.state.value}); read its output with "
            f"`handyjobs logs {name}`"
        )
    return tmux.attach_argv(record.session)


def gpu_overview(env: Mapping[str, str] | None = None) -> tuple[Discovery, dict[int, str]]:
    """GPU discovery plus which running job holds each GPU."""
    from handyjobs import booking, gpus

    records, _ = list_jobs()
    reg = registry.Registry({r.name: r for r in records})
    return gpus.discover(env), booking.held_gpus(reg)
