"""``handyjobs wait``: block until jobs end; exit with the first failure's code (124 on
--timeout)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from handyjobs.cli.args import AllOpt, GroupOpt, NamesArg
from handyjobs.cli.common import pick_names
from handyjobs.core import jobs
from handyjobs.core.records import exit_summary, returncode


def wait(
    names: NamesArg = None,
    group: GroupOpt = None,
    every: AllOpt = False,
    timeout: Annotated[
        float | None, typer.Option(help="Give up after this many s (exit code 124).")
    ] = None,
) -> None:
    """Wait for jobs to end; exit 0 when all succeeded, else with the first failure's code."""
    picked = pick_names(names, group, every, (), what="to wait for")
    first_failure = 0
    for name, record in jobs.wait_jobs(picked, timeout_s=timeout):
        run = record.current
        how = exit_summary(run)
        if how:
            print(f"{name}: {record.state.value} ({how})", file=sys.stderr)
        else:  # never started, or lost: say why rather than "no exit code"
            from handyjobs.views import render

            print(f"{name}: {render.state_text(record)}", file=sys.stderr)
        code = returncode(run)
        if code and not first_failure:
            first_failure = code
    raise typer.Exit(first_failure)
