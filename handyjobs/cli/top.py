"""``handyjobs top``: jobs, their processes' CPU and memory, GPUs and progress, live."""

from __future__ import annotations

from typing import Annotated

import typer

from handyjobs.errors import UsageError


def top(
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
) -> None:
    """A live view of jobs: state, CPU, memory, GPUs, progress, last line (q quits)."""
    from handyjobs.views import top as live

    if not interval > 0:
        raise UsageError(f"--interval {interval}: give a number of seconds above 0")
    raise typer.Exit(live.run_top(interval, once))
