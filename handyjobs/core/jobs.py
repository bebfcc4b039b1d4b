"""The core API for reading jobs: list, show, logs, wait, attach, GPUs, send.

Starting is in :mod:`handyjobs.core.starting`; stop, restart, remove and clean are in
:mod:`handyjobs.core.control`.

Each function does one user-visible thing and raises a :class:`HandyjobsError` with a line
that says what to do next. State changes go through :mod:`handyjobs.core.lifecycle`, sessions and
processes through the run's backend (:mod:`handyjobs.backends`), storage through
:mod:`handyjobs.core.registry`. GPU discovery happens outside the registry lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from handyjobs.core import paths, registry, scheduler
from handyjobs.core.records import JobRecord, JobState
from handyjobs.core.states import OWN_QUEUE
from handyjobs.errors import (
    JobNotFound,
    JobStateError,
    TimeoutExpired,
    UsageError,
    printable,
)
from handyjobs.structs import replace

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from handyjobs.gpus.discovery import Discovery

# The writers below import backends, lifecycle and spec inside the functions that need them:
# `handyjobs list` (the command people run in `watch`) must not pay for those imports.


def not_found(name: str) -> JobNotFound:
    """The one error for a name that has no record."""

    return JobNotFound(f"no job named {printable(name)}; see `handyjobs list --all`")


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
    from handyjobs.backends import base as backends  # lazy: `list` reads without it (start-up)
    from handyjobs.core import lifecycle  # lazy: `list` reads without it (start-up)

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
    if run.state.active or run.backend in OWN_QUEUE:  # no scheduler of its own to ask
        return record
    if run.cluster is not None and not run.cluster.verdict.active:
        return record
    from handyjobs.backends import base as backends  # lazy: `list` reads without it (start-up)

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

    record = get_job(name)
    procs = record.spec.world_size
    if not 0 <= rank < procs:
        raise UsageError(_no_such_rank(name, rank, procs))
    if procs == 1:
        return log_file(name)
    path = Path(paths.rank_log(record.log_path, rank))
    if must_exist and not path.is_file():
        raise JobStateError(_rank_log_missing(record, rank, path))
    return record, path


def ended_check(record: JobRecord) -> Callable[[], bool]:
    """A cheap "has this run ended?" for ``logs -f``: the runner's status file, then the record."""
    from handyjobs.backends import base as backends  # lazy: `list` reads without it (start-up)
    from handyjobs.core import lifecycle  # lazy: `list` reads without it (start-up)

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


# ---- wait, restart, remove ------------------------------------------------------------------


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


# ---- attach and GPUs -----------------------------------------------------------------------


def attach_argv(name: str) -> list[str]:
    """The command that attaches the caller's terminal to a live job's session."""
    from handyjobs.backends import base as backends  # lazy: `list` reads without it (start-up)

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
    from handyjobs.core import booking  # lazy: `list` reads without it (start-up)
    from handyjobs.gpus import discovery as gpus  # lazy: `list` reads without it (start-up)

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
    from handyjobs.backends import base as backends  # lazy: `list` reads without it (start-up)

    record = get_job(name)
    run = record.current
    if run.state is JobState.QUEUED or (run.state.active and run.main is None):
        raise JobStateError(f"job {name} has not started yet; send once it runs")
    if not run.state.active:
        raise JobStateError(f"job {name} has ended ({run.state.value}); nothing reads its input")
    backends.get(run.backend).send(run, text)
    return record


def _no_such_rank(name: str, rank: int, procs: int) -> str:
    """The error for ``logs --rank N`` past the job's ranks."""
    ranks = "rank 0" if procs == 1 else f"ranks 0-{procs - 1}"
    noun = "processes" if procs > 1 else "process"
    return f"job {name} runs {procs} {noun} ({ranks}); there is no rank {rank}"


def _rank_log_missing(record: JobRecord, rank: int, path: object) -> str:
    """The error for a rank whose own log is not there."""
    return (
        f"rank {rank} of job {record.name} has no log ({path}): it has not started yet, or the "
        f"job ran before handyjobs kept logs per rank; see `handyjobs logs {record.name}`"
    )
