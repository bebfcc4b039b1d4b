"""Tail and follow over log files (a rotated log is its ``.1`` file followed by the live one)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from typing import TypeAlias

__all__ = [
    "SUFFIX",
    "chunks",
    "follow",
    "lines_backwards",
    "previous",
    "tail",
    "tail_bytes",
    "tail_files",
]

StrPath: TypeAlias = "str | os.PathLike[str]"

#: A rotated log's earlier part is the live file's name with this suffix.
SUFFIX = ".1"

# Read backwards in blocks of this size when looking for the last lines of a log.
_BLOCK = 64 * 1024
# Copy at most this much per read while following (keeps memory flat on a 1 GB backlog).
_CHUNK = 1024 * 1024
# is_done may read the registry: ask it at most this often.
_DONE_INTERVAL_S = 0.5


def tail(path: StrPath, lines: int) -> tuple[bytes, int]:
    """Return the last `lines` lines of path and the offset they end at (for follow)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return b"", 0
    try:
        # A snapshot of the size: bytes appended from now on belong to follow(start_offset=end).
        end = os.fstat(fd).st_size
        start = _start_of_last_lines(fd, end, lines)
        return _pread_all(fd, start, end - start), end
    finally:
        os.close(fd)


def tail_bytes(path: StrPath, lines: int) -> bytes:
    """Return the last `lines` lines of path (all of it when shorter, b"" when missing)."""
    return tail(path, lines)[0]


def tail_files(paths: Sequence[StrPath], lines: int) -> tuple[bytes, int]:
    """The last ``lines`` lines of the files read one after another, and where the last ends.

    For a rotated log: ``[output.log.1, output.log]``; a missing file counts as empty. The
    offset is the live (last) file's size, from which :func:`follow` goes on.
    """
    opened: list[tuple[int, int]] = []
    live_end = 0
    try:
        for i, path in enumerate(paths):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            size = os.fstat(fd).st_size
            opened.append((fd, size))
            if i == len(paths) - 1:
                live_end = size
        parts: list[bytes] = []
        wanted = lines
        final = True  # the newest byte is still ahead of us
        for fd, end in reversed(opened):
            if wanted <= 0:
                break
            if end == 0:
                continue
            if final and os.pread(fd, 1, end - 1) == b"\n":
                wanted += 1  # a final newline ends the last line rather than starting one
            final = False
            start, wanted = _back_over_lines(fd, end, wanted)
            parts.append(_pread_all(fd, start, end - start))
        return b"".join(reversed(parts)), live_end
    finally:
        for fd, _ in opened:
            os.close(fd)


def _back_over_lines(fd: int, end: int, wanted: int) -> tuple[int, int]:
    """Going back from ``end``, where ``wanted`` newlines have been passed (the offset after the
    last one passed), and how many are still wanted when the file's start came first."""
    pos = end
    while pos > 0:
        size = min(_BLOCK, pos)
        pos -= size
        block = os.pread(fd, size, pos)
        count = block.count(b"\n")
        if count >= wanted:
            cut = len(block)
            for _ in range(wanted):
                cut = block.rindex(b"\n", 0, cut)
            return pos + cut + 1, 0
        wanted -= count
    return 0, wanted


def lines_backwards(fd: int, block: int = _BLOCK) -> Iterator[bytes]:
    """The non-empty lines of an open file, last first, read a block at a time from its end."""
    pos = os.fstat(fd).st_size
    rest = b""
    while pos > 0:
        size = min(block, pos)
        pos -= size
        lines = (os.pread(fd, size, pos) + rest).split(b"\n")
        rest = lines[0]
        for line in reversed(lines[1:]):
            if line:
                yield line
    if rest:
        yield rest


def previous(path: str) -> str:
    """Where the part of a rotated log before the live file is kept."""
    return path + SUFFIX


def chunks(
    paths: Sequence[StrPath], size: int = _CHUNK, last_end: int | None = None
) -> Iterator[bytes]:
    """Every byte of the files, one after another, in pieces of at most ``size``.

    ``last_end`` stops the last file there: a reader that follows on from that offset then
    prints every byte exactly once, however fast the file grows meanwhile.
    """
    for i, path in enumerate(paths):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        left = last_end if last_end is not None and i == len(paths) - 1 else None
        try:
            while left is None or left > 0:
                data = os.read(fd, size if left is None else min(size, left))
                if not data:
                    break
                if left is not None:
                    left -= len(data)
                yield data
        finally:
            os.close(fd)


def _start_of_last_lines(fd: int, end: int, lines: int) -> int:
    """Offset where the last `lines` lines before `end` start, found by reading backwards."""
    if lines <= 0 or end == 0:
        return end
    # A final "\n" ends the last line rather than starting an empty one.
    wanted = lines + (1 if os.pread(fd, 1, end - 1) == b"\n" else 0)
    return _back_over_lines(fd, end, wanted)[0]


def _pread_all(fd: int, offset: int, size: int) -> bytes:
    """Read size bytes at offset, fewer only if the file shrank meanwhile."""
    parts: list[bytes] = []
    while size > 0:
        data = os.pread(fd, min(size, _CHUNK), offset)
        if not data:
            break
        parts.append(data)
        offset += len(data)
        size -= len(data)
    return b"".join(parts)


def follow(
    path: StrPath,
    out_fd: int,
    is_done: Callable[[], bool],
    start_offset: int | None = None,
    poll_s: float = 0.05,
    transform: Callable[[bytes], bytes] | None = None,
) -> None:
    """Copy bytes appended to path to out_fd as they arrive, until is_done() and drained.

    ``transform`` turns what was read into what is written (``logs`` renders it).
    """
    follower = _Follower(path, out_fd, start_offset, transform)
    next_check = time.monotonic()
    try:
        while True:
            copied = follower.step()
            now = time.monotonic()
            if now >= next_check:
                next_check = now + _DONE_INTERVAL_S
                if is_done():
                    # Everything written before is_done() said so is on disk now: copy it all.
                    while follower.step():
                        pass
                    return
            if not copied:
                time.sleep(poll_s)
    except BrokenPipeError:
        # The reader went away (`handyjobs logs -f x | head`): that ends following, quietly.
        return
    finally:
        follower.close()


class _Follower:
    """An open log, the offset copied so far, and the checks for a log truncated or replaced."""

    def __init__(
        self,
        path: StrPath,
        out_fd: int,
        start_offset: int | None,
        transform: Callable[[bytes], bytes] | None = None,
    ) -> None:
        """Remember where to start; the file is opened on the first step that finds it."""
        self.path = path
        self.transform = transform
        self.out_fd = out_fd
        self.offset = start_offset
        self.fd = -1

    def close(self) -> None:
        """Close the log if it is open."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def step(self) -> bool:
        """Copy what is new; return whether anything was copied."""
        if self.fd < 0 and not self._open():
            return False
        copied = self._copy()
        if not copied and self._replaced():
            # A new file under the same name (a rotated or restarted job's log): what the old
            # one had is copied, so start the new one from its beginning. If the log rotated
            # twice since we looked, the file in between is the ``.1`` one: copy it first.
            was = os.fstat(self.fd)
            self.close()
            self._catch_up((was.st_dev, was.st_ino))
            self.offset = 0
            if self._open():
                copied = self._copy()
        return copied

    def _catch_up(self, was: tuple[int, int]) -> None:
        """Copy the previous file of a rotated log when it is not the one just finished."""
        try:
            fd = os.open(previous(os.fspath(self.path)), os.O_RDONLY)
        except OSError:
            return
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == was:
                return
            offset = 0
            while True:
                data = os.pread(fd, _CHUNK, offset)
                if not data:
                    return
                offset += len(data)
                _write_all(self.out_fd, data if self.transform is None else self.transform(data))
        finally:
            os.close(fd)

    def _open(self) -> bool:
        """Open the log if it exists yet."""
        try:
            self.fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            # Whatever the file holds once it appears was written after we started: all new.
            if self.offset is None:
                self.offset = 0
            return False
        if self.offset is None:
            self.offset = os.fstat(self.fd).st_size
        return True

    def _copy(self) -> bool:
        """Copy from the offset to the current end of the open log."""
        assert self.offset is not None
        if os.fstat(self.fd).st_size < self.offset:
            self.offset = 0  # truncated in place: follow the new content from its start
        copied = False
        while True:
            data = os.pread(self.fd, _CHUNK, self.offset)
            if not data:
                return copied
            self.offset += len(data)
            _write_all(self.out_fd, data if self.transform is None else self.transform(data))
            copied = True

    def _replaced(self) -> bool:
        """Whether path now names a different file than the one open."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        was = os.fstat(self.fd)
        return (now.st_dev, now.st_ino) != (was.st_dev, was.st_ino)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of data, through partial writes and a non-blocking fd."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            # Imported here: registry reads history through this module on every `list`.
            import select

            select.select([], [fd], [])
            continue
        view = view[n:]
