"""A job's log shown as its terminal showed it, and followed to the job's end (``logs -f``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from handyjobs.core import jobs
from handyjobs.core import logs as logmod
from handyjobs.core.records import returncode
from handyjobs.errors import UsageError
from handyjobs.jobside.terminal import Renderer, TagMode
from handyjobs.views import render


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
    files = [Path(logmod.previous(str(path))), path]
    colour = not (plain or raw) and render.use_colour()
    mode = TagMode.RAW if raw else TagMode.PREFIX if prefix else TagMode.PANE
    single = record.spec.procs == 1
    live = follow and not raw and render.fancy()  # a terminal: redraw the unfinished line
    view = Renderer(colour, live=live, mode=mode, single=single, raw=raw)
    out = sys.stdout.buffer
    try:
        if lines is None:
            # Everything up to this size is printed, and following goes on from it: a line
            # the job writes meanwhile is printed once, by the follower.
            end = path.stat().st_size if path.exists() else 0
            for chunk in logmod.chunks(files, last_end=end):
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
        # Point stdout at /dev/null so Python's flush at exit does not raise on the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return None
    run = jobs.get_job(name).run_by_id(record.current.run_id) or record.current
    return returncode(run)


def follow_to_end(name: str) -> int | None:
    """Follow a job's log from its start until the job ends."""
    return show_log(name, None, True)
