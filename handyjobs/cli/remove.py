"""``handyjobs rm`` and ``handyjobs clean``: forget finished jobs (logs kept unless --logs)."""

from __future__ import annotations

from typing import Annotated

import typer

from handyjobs.cli.args import NamesArg
from handyjobs.cli.common import each_name, parse_states
from handyjobs.core import jobs
from handyjobs.errors import UsageError


def rm(
    names: NamesArg = None,
    force: Annotated[bool, typer.Option("--force", help="Stop active jobs first.")] = False,
    with_logs: Annotated[bool, typer.Option("--logs", help="Delete their logs too.")] = False,
) -> None:
    """Remove finished jobs from the registry (logs kept unless --logs)."""
    if not names:
        raise UsageError("give the jobs to remove: NAME... (or `handyjobs clean`)")

    def one(name: str) -> None:
        jobs.remove_job(name, force=force, logs=with_logs)
        print(f"removed {name}")

    raise typer.Exit(each_name(names, one))


def clean(
    with_logs: Annotated[bool, typer.Option("--logs", help="Delete their logs too.")] = False,
    state: Annotated[list[str] | None, typer.Option(help="Only these end states.")] = None,
) -> None:
    """Remove every finished job from the registry."""
    names = jobs.clean_jobs(logs=with_logs, states=parse_states(state))
    print(f"removed {len(names)} finished job{'s' if len(names) != 1 else ''}")
