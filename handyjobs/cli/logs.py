"""``handyjobs logs``: the job's output as its terminal showed it; ``-f`` follows it to the end."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from handyjobs.cli.args import NameArg
from handyjobs.core import jobs
from handyjobs.core.records import returncode
from handyjobs.errors import UsageError


def show_log(
    name: str,
    lines: int | None,
    follow: bool,
    rank: int | None = None,
    prefix: bool = False,
    raw: bool = False,
    plain: bool = False,
) -> int | None:
    """Print the log (or its last lines), then follow it; the job's code when followed."""
    from handyjobs.core import logs as logmod
    from handyjobs.jobside import rotation
    from handyjobs.jobside.terminal import Renderer, TagMode
    from handyjobs.views import render

    if lines is not None and lines < 0:
        raise UsageError(f"-n {lines}: give 0 or more lines")
    if raw and (prefix or plain):
        raise UsageError("--raw prints the bytes as written; leave out --prefix and --plain")
    if prefix and rank is not None:
        raise UsageError("--rank shows one rank's own log; --prefix labels the merged one")
    if rank is None:
        record, path = jobs.log_file(name)
    else:
        record, path = jobs.rank_log_file(name, rank, must_exist=not follow)
    files = [Path(rotation.previous(str(path))), path]
    colour = not (plain or raw) and render.use_colour()
    mode = TagMode.RAW if raw else TagMode.PREFIX if prefix else TagMode.PANE
    single = record.spec.procs == 1
    live = follow and not raw and render.fancy()  # a terminal: redraw the unfinished line
    view = Renderer(colour, live=live, mode=mode, single=single, raw=raw)
    out = sys.stdout.buffer
    try:
        if lines is None:
            end = path.stat().st_size if path.exists() else 0
            for chunk in logmod.chunks(files):
                out.write(view.feed(chunk))
        else:
            data, end = logmod.tail_files(files, lines)
            out.write(view.feed(data))
        if not (follow and record.state.active):
            out.write(view.finish())
        out.flush()
        if not follow:
            return None
        if record.state.active:
            logmod.follow(
                path, out.fileno(), jobs.ended_check(record), start_offset=end, transform=view.feed
            )
            os.write(out.fileno(), view.finish())
    except BrokenPipeError:  # `handyjobs logs x | head`
        from handyjobs.cli import quiet_stdout

        quiet_stdout()
        return None
    run = jobs.get_job(name).run_by_id(record.current.run_id) or record.current
    return returncode(run)


def follow_to_end(name: str) -> int | None:
    """Follow a job's log from its start until the job ends."""
    return show_log(name, None, True)


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
