"""``handyjobs restart``: the job's spec again, as a new run, with its first environment."""

from __future__ import annotations

from typing import Annotated

import typer

from handyjobs import jobs


def restart(
    name: str,
    env: Annotated[
        list[str] | None, typer.Option(help="Change one variable: KEY=VALUE (repeatable).")
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds between SIGTERM and SIGKILL if it runs.")
    ] = jobs.DEFAULT_GRACE_S,
) -> None:
    """Start a job's spec again as a new run (stopping it first if it runs)."""
    result = jobs.restart_job(name, env=env or [], grace_s=timeout)
    record = result.record
    run = record.current
    print(f"restarted {record.name}: run {run.run}, {run.state.value}; log {record.log_path}")
    if not result.env_reused:
        print("  (no environment was kept for this job: it runs with this shell's)")
