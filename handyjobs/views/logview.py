"""A job's log shown as its terminal showed it, and followed to the job's end (``logs -f``)."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from handyjobs.core import jobs, paths
from handyjobs.core import logs as logmod
from handyjobs.core.records import JobRecord, returncode
from handyjobs.errors import JobNotFound, UsageError
from handyjobs.jobside.terminal import Renderer, TagMode, split_tag
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
    single = record.spec.world_size == 1
    live = follow and not raw and render.fancy()  # a terminal: redraw the unfinished line
    view = Renderer(colour, live=live, mode=mode, single=single, raw=raw)
    out = sys.stdout.buffer
    try:
        if lines is None:
            out.write(view.feed(rotated_note(files)))
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
        _quiet_stdout()
        return None
    run = jobs.get_job(name).run_by_id(record.current.run_id) or record.current
    return returncode(run)


#: What every log starts with: the runner's first note (queued, or the run's header).
_RUNNER_NOTE = b"[handyjobs] "


def rotated_note(files: Sequence[Path]) -> bytes:
    """A line to print first when the log kept does not start where the job's did (it was
    rotated past its cap more than once), else nothing."""
    for path in files:
        try:
            with path.open("rb") as f:
                head = f.read(len(_RUNNER_NOTE))
        except OSError:
            continue
        if not head:
            continue
        if head == _RUNNER_NOTE:
            return b""
        return (
            _RUNNER_NOTE + b"(the log was rotated: what came before is gone; only the last "
            b"part and the one before it are kept, see HANDYJOBS_LOG_MAX_MB)\n"
        )
    return b""


def show_removed_log(name: str, lines: int | None, raw: bool = False, plain: bool = False) -> None:
    """The log a removed job of this name left (the newest such job's), as ``logs`` shows one."""
    if lines is not None and lines < 0:
        raise UsageError(f"-n {lines}: give 0 or more lines")
    folders = paths.removed_folders(name)
    if not folders:
        raise JobNotFound(
            f"no removed job named {render.printable(name)} kept its log; "
            "see `handyjobs list --all` for the jobs there are"
        )
    path = folders[-1] / paths.log_path(name).name
    files = [Path(logmod.previous(str(path))), path]
    single = not any(folders[-1].glob("rank-*.log"))
    colour = not (plain or raw) and render.use_colour()
    view = Renderer(colour, mode=TagMode.RAW if raw else TagMode.PANE, single=single, raw=raw)
    out = sys.stdout.buffer
    try:
        if lines is None:
            for chunk in logmod.chunks(files):
                out.write(view.feed(chunk))
        else:
            out.write(view.feed(logmod.tail_files(files, lines)[0]))
        out.write(view.finish())
        out.flush()
    except BrokenPipeError:
        _quiet_stdout()


#: How many of a log's last lines ``show`` reads for a failed job's error.
FAILURE_LINES = 400
#: The most lines of a traceback ``show`` prints.
EXCERPT_LINES = 12
_ROOT_CAUSE = "Root Cause (first observed failure)"
_RANK_RE = re.compile(r"^\s*rank\s*:\s*(\d+)")
_TORCH_PREFIX = re.compile(r"^\[rank\d+\]: ")


def _plain_lines(path: Path, lines: int) -> list[str]:
    """The last lines of a log as text: rank tags and torch's own ``[rankN]:`` taken off."""
    text = logmod.tail_bytes(path, lines).decode(errors="replace")
    out = []
    for line in text.splitlines():
        _, bare = split_tag(line.encode())
        out.append(_TORCH_PREFIX.sub("", render.printable(bare.decode(errors="replace"))))
    return out


def failure(record: JobRecord) -> tuple[int | None, list[str]]:
    """For a failed job: the rank torchrun saw fail first (None: one process, or not said),
    and the end of the error it printed (its last traceback, else its last lines)."""
    log = Path(record.log_path)
    lines = _plain_lines(log, FAILURE_LINES)
    first = None
    for i in range(len(lines) - 1, -1, -1):
        if _ROOT_CAUSE in lines[i]:
            found = (_RANK_RE.match(line) for line in lines[i : i + 12])
            first = next((int(m.group(1)) for m in found if m), None)
            lines = lines[:i]  # the report is torchrun's; the error is the rank's
            break
    if first is not None and record.spec.world_size > 1:
        own = Path(paths.rank_log(record.log_path, first))
        if own.is_file():
            lines = _plain_lines(own, FAILURE_LINES)
    mine = [line for line in lines if not line.startswith("[handyjobs]") and line.strip()]
    start = next(
        (i for i in range(len(mine) - 1, -1, -1) if mine[i].startswith("Traceback (most recent")),
        None,
    )
    excerpt = mine[start:] if start is not None else mine[-5:]
    if len(excerpt) > EXCERPT_LINES:  # the head says where it began, the tail what it was
        excerpt = [*excerpt[:2], "...", *excerpt[-(EXCERPT_LINES - 3) :]]
    return first, excerpt


class _Tagged:
    """One job's part of ``logs a b``: its lines rendered, each tagged with the job's name,
    written whole (under the lock) so that two jobs' lines never mix within a line."""

    def __init__(self, name: str, width: int, view: Renderer, lock: threading.Lock) -> None:
        """The tag is the name padded to ``width``."""
        self.tag = (name.ljust(width) + " | ").encode()
        self.view, self.lock = view, lock

    def write(self, shown: bytes) -> None:
        """Tag each whole line of ``shown`` and write them at once."""
        if not shown:
            return
        lines = shown.removesuffix(b"\n").split(b"\n")
        data = b"".join(self.tag + line + b"\n" for line in lines)
        with self.lock:
            paths.write_all(sys.stdout.fileno(), data)

    def feed(self, data: bytes) -> bytes:
        """Take bytes read from the log; write what is whole; nothing left for the caller."""
        self.write(self.view.feed(data))
        return b""

    def finish(self) -> None:
        """Write the last line, unfinished, as it stands."""
        self.write(self.view.finish())


def show_logs(names: Sequence[str], lines: int | None, follow: bool, plain: bool = False) -> int:
    """Several jobs' logs, each line tagged with its job; with ``follow``, followed together
    until every one has ended. Exit code: 0 when all succeeded, else the first failure's
    (in the order named), as ``wait`` gives it."""
    if lines is not None and lines < 0:
        raise UsageError(f"-n {lines}: give 0 or more lines")
    found = [jobs.log_file(name) for name in names]
    colour = not plain and render.use_colour()
    lock = threading.Lock()
    width = max(len(record.name) for record, _ in found)
    followers = []
    try:
        for record, path in found:
            view = Renderer(colour, mode=TagMode.PANE, single=record.spec.world_size == 1)
            tagged = _Tagged(record.name, width, view, lock)
            files = [Path(logmod.previous(str(path))), path]
            if lines is None:
                end = path.stat().st_size if path.exists() else 0
                for chunk in logmod.chunks(files, last_end=end):
                    tagged.feed(chunk)
            else:
                data, end = logmod.tail_files(files, lines)
                tagged.feed(data)
            if follow and record.state.active:
                followers.append((record, path, end, tagged))
            else:
                tagged.finish()
        threads = [
            threading.Thread(target=_follow_one, args=(record, path, end, tagged), daemon=True)
            for record, path, end, tagged in followers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    except BrokenPipeError:  # `handyjobs logs a b | head`
        _quiet_stdout()
        return 0
    if not follow:
        return 0
    codes = [
        returncode(jobs.get_job(r.name).run_by_id(r.current.run_id) or r.current) for r, _ in found
    ]
    return next((code for code in codes if code), 0)


def _follow_one(record: JobRecord, path: Path, end: int, tagged: _Tagged) -> None:
    """Follow one job's log to its end (a thread of :func:`show_logs`)."""
    # The reader going away (`| head`) ends following quietly, here as in the main thread.
    with contextlib.suppress(BrokenPipeError):
        logmod.follow(path, -1, jobs.ended_check(record), start_offset=end, transform=tagged.feed)
        tagged.finish()


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so Python's flush at exit does not raise on a closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def follow_to_end(name: str) -> int | None:
    """Follow a job's log from its start until the job ends."""
    return show_log(name, None, True)
