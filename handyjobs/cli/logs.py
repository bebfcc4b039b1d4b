"""``handyjobs logs``: the job's output, every byte, and ``-f`` to follow it to the end."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from handyjobs import jobs
from handyjobs.cli.args import NameArg
from handyjobs.errors import UsageError
from handyjobs.records import returncode


def show_log(name: str, lines: int | None, follow: bool) -> int | None:
    """Print the log (or its last lines), then follow it; the job's code when followed."""
    from handyjobs import logs as logmod

    if lines is not None and lines < 0:
        raise UsageError(f"-n {lines}: give 0 or more lines")
    record, path = jobs.log_file(name)
    data, end = logmod.tail(path, lines if lines is not None else 1 << 62)
    out = sys.stdout.buffer
    try:
        out.write(data)
        out.flush()
    except BrokenPipeError:  # `handyjobs logs x | head`
        from handyjobs.cli import quiet_stdout

        quiet_stdout()
        return None
    if not follow:
        return None
    if record.state.active:
        logmod.follow(path, out.fileno(), jobs.ended_check(record), start_offset=end)
    run = jobs.get_job(name).run_by_id(record.current.run_id) or record.current
    return returncode(run)


def follow_to_end(name: str) -> int | None:
    """Follow a job's log from its start until the job ends."""
    return show_log(name, None, True)


def logs(
    name: NameArg,
    lines: Annotated[int | None, typer.Option("-n", "--lines", help="Only the last N.")] = None,
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Until the job ends; exit with its code.")
    ] = False,
) -> None:
    """Print a job's log (every byte it printed, across restarts)."""
    code = show_log(name, lines, follow)
    if code is not None:
        raise typer.Exit(code)
