"""The ``--on-exit`` command: run when a job ends, with its outcome in the environment.

It runs without a shell (its argv was split once, at ``start``: write ``sh -c '...'`` for a
shell), in the job's folder of work, with the job's environment plus::

    HANDYJOBS_JOB, HANDYJOBS_RUN, HANDYJOBS_STATE (succeeded, failed, stopped, ...),
    HANDYJOBS_EXIT_CODE (empty when killed by a signal), HANDYJOBS_SIGNAL (SIGTERM, ...),
    HANDYJOBS_DURATION_S, HANDYJOBS_LOG, HANDYJOBS_GPUS (0,1; empty on CPU), HANDYJOBS_GROUP

Its output goes to the job's log. It may take :data:`TIMEOUT_S`; a command that fails, hangs
or does not exist is noted in the log and never changes the job's outcome.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

from handyjobs.core import cgroups, paths, registry
from handyjobs.core.records import JobRecord, JobSpec, Run, parse_time
from handyjobs.errors import HandyjobsError

#: Seconds an on-exit command may run before it is killed.
TIMEOUT_S = 60.0


def _signal_name(number: int) -> str:
    """``SIGTERM`` for 15; ``signal 99`` for a number with no name here."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def outcome_env(
    name: str, run: Run | None, state: str, log_path: str, group: str | None
) -> dict[str, str]:
    """The variables that tell an on-exit command how the job ended."""

    duration = ""
    if run is not None and run.started_at and run.ended_at:
        seconds = (parse_time(run.ended_at) - parse_time(run.started_at)).total_seconds()
        duration = f"{seconds:.1f}"
    how = "" if run is None or run.signal is None else _signal_name(run.signal)
    return {
        "HANDYJOBS_JOB": name,
        "HANDYJOBS_RUN": "" if run is None else str(run.run),
        "HANDYJOBS_STATE": state,
        "HANDYJOBS_EXIT_CODE": "" if run is None or run.exit_code is None else str(run.exit_code),
        "HANDYJOBS_SIGNAL": how if run is not None and run.signal is not None else "",
        "HANDYJOBS_DURATION_S": duration,
        "HANDYJOBS_LOG": log_path,
        "HANDYJOBS_GPUS": "" if run is None else ",".join(map(str, run.gpus)),
        "HANDYJOBS_GROUP": group or "",
    }


def run_on_exit(
    spec: JobSpec,
    name: str,
    run: Run | None,
    state: str,
    env: Mapping[str, str],
    log_fd: int,
    log_path: str,
) -> str | None:
    """Run the command; return a note for the log when it did not succeed, else None."""
    full = {**env, **outcome_env(name, run, state, log_path, spec.group)}
    full.pop("HANDYJOBS_RUN_ID", None)  # it is not one of the job's processes: stop skips it
    # A cgroup of its own: whatever the command leaves running (a daemon it forks, even in a
    # session of its own) is a member, and ended with it. Else its process group only.
    group = cgroups.create(f"{run.run_id if run else os.getpid()}-hook")
    files = group.procs_files
    try:
        proc = subprocess.Popen(
            list(spec.on_exit),
            cwd=spec.cwd,
            env=full,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,
            preexec_fn=(lambda: cgroups.join_self(files)) if files else None,
        )
    except OSError as exc:
        _end_all(None, group)
        return f"on-exit command {spec.on_exit[0]!r} could not run: {exc.strerror or exc}"
    try:
        code = proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        _end_all(proc, group)
    if code is None:
        return f"on-exit command killed after {TIMEOUT_S:g}s"
    if code != 0:
        return f"on-exit command exited {code}"
    return None


def _end_all(proc: subprocess.Popen[bytes] | None, group: cgroups.RunGroup) -> None:
    """End what the command left: its process group, and every member of its cgroup (which
    holds only its processes, so membership is their identity), then remove the cgroup."""
    if proc is not None:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for _ in range(50):  # a member may fork while we kill; the cgroup empties in a few rounds
        members = group.members()
        if not members:
            break
        for pid in members:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        group.remove(0.1)
    group.remove(0)


def ended_run(root: Path, name: str, run_id: str) -> tuple[JobRecord | None, str]:
    """The job's record as it is now, and the run's end state (as far as it can be read)."""
    with contextlib.suppress(HandyjobsError):
        record = registry.load_one(name, root)
        run = None if record is None else record.run_by_id(run_id)
        if record is not None and run is not None:
            return record, run.state.value
    return None, "unknown"


def after_run(
    root: Path, name: str, run_id: str, spec: JobSpec, env: Mapping[str, str], log_fd: int
) -> str | None:
    """Run the job's ``--on-exit`` command once its run ended; a note for the log, or None."""
    if not spec.on_exit:
        return None
    record, state = ended_run(root, name, run_id)
    run = None if record is None else record.run_by_id(run_id)
    log_path = str(paths.log_path(name, root)) if record is None else record.log_path
    return run_on_exit(spec, name, run, state, dict(env), log_fd, log_path)
