"""``handyjobs restart``: the job's spec again, as a new run, with its first environment."""

from __future__ import annotations

from typing import Annotated

import typer

from handyjobs.cli.args import GroupOpt
from handyjobs.cli.common import complete_names, each_name, pick_names
from handyjobs.core import jobs
from handyjobs.core.records import JobState
from handyjobs.errors import UsageError


def restart(
    name: Annotated[
        str | None, typer.Argument(help="The job.", autocompletion=complete_names)
    ] = None,
    args: Annotated[
        list[str] | None, typer.Argument(help="New arguments for the script (after --).")
    ] = None,
    env: Annotated[
        list[str] | None, typer.Option(help="Change one variable: KEY=VALUE (repeatable).")
    ] = None,
    all_failed: Annotated[
        bool, typer.Option("--all-failed", help="Every failed job (of --group).")
    ] = False,
    group: GroupOpt = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds between SIGTERM and SIGKILL if it runs.")
    ] = jobs.DEFAULT_GRACE_S,
) -> None:
    """Start a job's spec again as a new run (stopping it first if it runs)."""
    if all_failed:
        if name is not None or args:
            raise UsageError("--all-failed restarts jobs as they were: give no NAME or arguments")
        names = pick_names(None, group, group is None, (JobState.FAILED,), what="to restart")
    elif name is None:
        raise UsageError("give the NAME of the job to restart (or --all-failed)")
    else:
        names = [name]

    def one(job: str) -> None:
        result = jobs.restart_job(job, env=env or [], grace_s=timeout, args=args or None)
        record = result.record
        run = record.current
        print(f"restarted {record.name}: run {run.run}, {run.state.value}; log {record.log_path}")
        if not result.env_reused:
            print("  (no environment was kept for this job: it runs with this shell's)")

    raise typer.Exit(each_name(names, one))
