"""Runs inside the job's tmux pane: waits for GPUs if queued, starts the job on a TTY, tees
every byte to the log, and records pids, start, end and exit code or signal.

Invoked by ``jobs`` as ``python -m handyjobs.runner HOME NAME RUN_ID``. The caller's environment
arrives in a private launch file (read, then deleted) rather than on a command line that other
users could read in ``ps``. The outcome is written to the run's status file first (the truth
that ``registry.reconcile`` reads), then folded into the registry under its lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from handyjobs import launch, paths, procs, registry
from handyjobs.records import JobSpec, JobState, utcnow

#: Seconds between two looks at the GPUs while a job is queued.
QUEUE_POLL_S = 1.0


class _Status:
    """The run's status file, rewritten atomically at each step."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path = path
        self.doc: dict[str, Any] = {"run_id": run_id, "pids": {"runner": os.getpid()}}
        self.write()

    def update(self, **values: Any) -> None:
        """Merge ``values`` into the status and write it."""
        pids = values.pop("pids", None)
        if pids:
            self.doc["pids"].update(pids)
        self.doc.update(values)
        self.write()

    def write(self) -> None:
        """Replace the file atomically."""
        paths.write_atomic(self.path, json.dumps(self.doc).encode())


def _say(log_fd: int, text: str) -> None:
    """A handyjobs line in the log and on the pane (dimmed there)."""
    line = f"[handyjobs] {text}\n".encode()
    os.write(log_fd, line)
    with contextlib.suppress(OSError):  # the pane may be gone; the log has the line
        os.write(1, b"\x1b[2m" + line + b"\x1b[0m")


def _wait_for_gpus(
    root: Path, name: str, run_id: str, env: dict[str, str], log_fd: int
) -> tuple[int, ...] | None:
    """Block until the queue says this job may start; book its GPUs under the registry lock.

    Returns None when the job was stopped or removed while it waited.
    """
    from handyjobs import booking, gpus, jobs

    policy = booking.Policy.from_env(env)
    said = None
    while True:
        with registry.locked(root) as reg:
            record = reg.jobs.get(name)
            if record is None or record.current.run_id != run_id:
                return None
            if record.state is not JobState.QUEUED or record.current.stop_requested:
                return None
            jobs.refresh_locked(reg, root)
            discovery = gpus.discover(env)
            got = booking.plan(reg, discovery, policy).get(name)
            run = record.current
            if got is not None:
                run.state, run.gpus, run.waiting_for = JobState.RUNNING, got, None
                reg.put(record)
                return got
            why = booking.explain(reg, discovery, policy, record.spec, name)
            if why != run.waiting_for:
                run.waiting_for = why
                reg.put(record)
        if why != said:
            _say(log_fd, f"queued: {why}")
            said = why
        time.sleep(QUEUE_POLL_S)


def _fold(root: Path, name: str, run_id: str, status: dict[str, Any]) -> None:
    """Apply the status to the registry record, if the record still belongs to this run."""
    with registry.locked(root) as reg:
        record = reg.jobs.get(name)
        fresh = record is not None and record.current.run_id == run_id
        if record is not None and fresh and registry.apply_status(record.current, status):
            reg.put(record)


def _reap_orphans() -> None:
    """Collect exit statuses of re-parented workers (we are their subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def run(root: Path, name: str, run_id: str) -> int:
    """The runner's whole life; returns the job's shell-style exit code."""
    from handyjobs.tee import run_on_pty

    procs.set_child_subreaper()  # orphaned torchrun workers come back to us, not to init
    status = _Status(paths.status_path(name, run_id, root), run_id)
    launch_file = paths.launch_env_path(name, run_id, root)
    doc = json.loads(launch_file.read_bytes())
    launch_file.unlink()
    env: dict[str, str] = doc["env"]
    # Settings such as the tmux socket and a fake GPU file are the caller's, not tmux's.
    os.environ.update({k: v for k, v in env.items() if k.startswith("HANDYJOBS_")})
    spec = JobSpec.from_dict(doc["spec"])
    # `start` holds the registry lock from before it made this session until its record is
    # saved; if it died in between (SIGKILL), there is no record and nothing must start.
    with registry.shared(root):
        record = registry.load_one(name, root)
    if record is None or record.current.run_id != run_id:
        status.path.unlink(missing_ok=True)
        return 1
    log_fd = os.open(doc["log_path"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    gpu_ids = None if doc["gpus"] is None else tuple(doc["gpus"])
    if gpu_ids is None and doc.get("booked_gpus"):
        gpu_ids = _wait_for_gpus(root, name, run_id, env, log_fd)
        if gpu_ids is None:
            _say(log_fd, "stopped while queued")
            return 1
    ctx = launch.RunContext(
        name, int(doc["run"]), run_id, gpu_ids if doc.get("booked_gpus") else None, doc["log_path"]
    )
    job = launch.build(spec, ctx, env, pane_env=os.environ)
    where = f"GPUs {','.join(map(str, gpu_ids))}" if gpu_ids else ("CPU" if spec.cpu else "")
    _say(
        log_fd,
        f"run {ctx.run} of {name} started {utcnow()}{' on ' + where if where else ''}: "
        f"{launch.display(job.argv)}",
    )
    started = time.monotonic()

    def on_start(pid: int) -> None:
        status.update(
            started_at=utcnow(),
            pids={"main": pid},
            rendezvous=job.rendezvous,
            gpus=list(gpu_ids or ()),
        )

    outcome = run_on_pty(job.argv, job.env, spec.cwd, log_fd, on_start=on_start)
    _reap_orphans()
    ended = utcnow()
    how = f"exit code {outcome.exit_code}" if outcome.signal is None else f"signal {outcome.signal}"
    status.update(ended_at=ended, exit_code=outcome.exit_code, signal=outcome.signal)
    _say(
        log_fd,
        f"run {ctx.run} of {name} ended {ended}: {how} after {time.monotonic() - started:.1f}s",
    )
    os.close(log_fd)
    _fold(root, name, run_id, status.doc)
    return outcome.returncode


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m handyjobs.runner HOME NAME RUN_ID``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        sys.exit("usage: python -m handyjobs.runner HOME NAME RUN_ID (started by handyjobs)")
    sys.exit(run(Path(args[0]), args[1], args[2]))


if __name__ == "__main__":
    main()
