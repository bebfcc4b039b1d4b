"""``handyjobs wait``: block until a job ends; exit with its code (124 on --timeout)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from handyjobs import jobs
from handyjobs.records import exit_summary, returncode


def wait(
    name: str,
    timeout: Annotated[
        float | None, typer.Option(help="Give up after this many s (exit code 124).")
    ] = None,
) -> None:
    """Wait for a job to end; exit with its exit code."""
    record = jobs.wait_job(name, timeout_s=timeout)
    how = exit_summary(record.current) or "no exit code"
    print(f"{name}: {record.state.value} ({how})", file=sys.stderr)
    raise typer.Exit(returncode(record.current))
