"""``handyjobs logs``: the job's output as its terminal showed it; ``-f`` follows it to the end."""

from __future__ import annotations

from typing import Annotated

import typer

from handyjobs.cli.args import NameArg
from handyjobs.views.logview import show_log


def logs(
    name: NameArg,
    lines: Annotated[
        int | None, typer.Option("-n", "--lines", help="Only the last N lines (as shown).")
    ] = None,
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Until the job ends; exit with its code.")
    ] = False,
    rank: Annotated[
        int | None, typer.Option("--rank", help="Rank N's own log (jobs of several processes).")
    ] = None,
    prefix: Annotated[
        bool, typer.Option("--prefix", help="Label every line with its rank (or [launcher]).")
    ] = False,
    raw: Annotated[
        bool, typer.Option("--raw", help="The bytes as written: redraws, escapes, rank tags.")
    ] = False,
    plain: Annotated[
        bool, typer.Option("--plain", help="No colours (the default when piped).")
    ] = False,
) -> None:
    """Print a job's output as its terminal showed it (every byte with --raw)."""
    code = show_log(name, lines, follow, rank=rank, prefix=prefix, raw=raw, plain=plain)
    if code is not None:
        raise typer.Exit(code)
