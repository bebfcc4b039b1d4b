"""Show a log as a terminal would have shown it: redraws collapsed, colours kept or dropped.

A job on a terminal redraws a progress bar by going back to the start of the line (``\\r``)
and writing over it; the log holds every redraw. Here a line is replayed on a model of one
terminal row (cells, a cursor, erase-in-line, cursor left/right, column moves), so that
``\\r``, ``\\b`` and ``ESC[K`` leave what a screen would show. Colour (SGR) sequences are kept
for a terminal or dropped for pipes (``plain``). Sequences that move between rows (cursor up,
clear screen) cannot be replayed on one row and are dropped: a redraw of several rows shows
as its rows, one after another.

Lines of a job of several processes carry their rank's tag (``[rank N] ``, written by
:mod:`handyjobs.jobside.rank`); :func:`retag` decides how a view shows them.

No rich, no torch: this runs in ``logs``, in the runner's pane filter and in each rank wrapper.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import Enum

__all__ = [
    "LineState",
    "PaneFilter",
    "Renderer",
    "TagMode",
    "compact",
    "escape_c1",
    "last_line",
    "render",
    "render_line",
    "retag",
    "split_tag",
    "strip_escapes",
    "tag_line",
]

# ESC [ params intermediates final | ESC ] ... BEL/ST | ESC ( X | ESC X.
_ESCAPE = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]"
    rb"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    rb"|\x1b[()*+][0-9A-Za-z]"
    rb"|\x1b[@-Z\\-_]"
)
_ESCAPE_STR = re.compile(_ESCAPE.pattern.decode("latin-1"))
# What makes a line need the row model; a line without any of these is shown as it is.
_NEEDS_MODEL = re.compile(rb"[\r\x08]|\x1b\[[0-?]*[ -/]*[@-ln-~]|\x1b[^\[]")
_NEEDS_ANY = re.compile(rb"[\r\x08\x1b]")
# C0 controls a screen does not print (tab and newline aside); BEL would ring the user's bell.
_INVISIBLE = re.compile(rb"[\x00-\x07\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]")
#: A line waiting for its newline longer than this is compacted (a bar redrawn for hours).
COMPACT_AT = 64 * 1024
#: Escape text kept in front of one cell; a program that sets colours endlessly without
#: printing must not grow the model without bound.
_MAX_CELL_ESCAPES = 256

TAG_RE = re.compile(rb"\[rank (\d+)\] ")
HANDYJOBS_PREFIX = b"[handyjobs] "


def tag_line(rank: int, line: bytes) -> bytes:
    """``line`` with its rank's tag in front, as a job of several processes logs it (torch's
    own ``[rankN]: `` in front of a traceback's lines says the same: it goes)."""
    own = b"[rank%d]: " % rank
    return b"[rank %d] " % rank + (line[len(own) :] if line.startswith(own) else line)


def split_tag(line: bytes) -> tuple[int | None, bytes]:
    """The rank a log line carries (None when it carries none) and the line without the tag."""
    match = TAG_RE.match(line)
    if match is None:
        return None, line
    return int(match.group(1)), line[match.end() :]


def strip_escapes(data: bytes) -> bytes:
    """``data`` without escape sequences and invisible control characters."""
    return _INVISIBLE.sub(b"", _ESCAPE.sub(b"", data))


class LineState:
    """One terminal row: cells written so far and the cursor; fed text, it redraws as a screen.

    Each cell holds its character with the escape sequences (colours) written just before it.
    """

    def __init__(self, colour: bool) -> None:
        """An empty row; ``colour`` keeps SGR sequences, else every escape is dropped."""
        self.colour = colour
        self.cells: list[str] = []
        self.col = 0
        self.pending = ""  # escapes waiting for the next character
        self.styled = False

    def feed(self, text: str) -> None:
        """Replay ``text`` (no newline in it) on the row."""
        pos = 0
        n = len(text)
        while pos < n:
            ch = text[pos]
            if ch == "\x1b":
                match = _ESCAPE_STR.match(text, pos)
                if match is None:  # a lone ESC: nothing a screen shows
                    pos += 1
                    continue
                self._escape(match.group())
                pos = match.end()
                continue
            pos += 1
            if ch == "\r":
                self.col = 0
            elif ch == "\b":
                self.col = max(0, self.col - 1)
            elif ch == "\t":
                self.col = (self.col // 8 + 1) * 8
            elif ch < " " or ch == "\x7f":
                continue
            else:
                self._put(ch)

    def _put(self, ch: str) -> None:
        cell = self.pending + ch
        self.pending = ""
        cells = self.cells
        if self.col < len(cells):
            cells[self.col] = cell
        else:
            cells.extend(" " * (self.col - len(cells)))
            cells.append(cell)
        self.col += 1

    def _escape(self, seq: str) -> None:
        if not seq.startswith("\x1b["):
            if self.colour and seq.startswith("\x1b]8;"):  # hyperlinks wrap text: keep them
                self._keep(seq)
            return
        final = seq[-1]
        params = seq[2:-1]
        if final == "m":
            if self.colour:
                self._keep(seq)
            return
        if params.startswith("?") or not all(c.isdigit() or c == ";" for c in params):
            return  # private modes (cursor shown or hidden) and the like change nothing seen
        first = params.split(";", 1)[0]
        count = int(first) if first else None
        if final == "K":
            if not count:
                del self.cells[self.col :]
            elif count == 1:
                for i in range(min(self.col + 1, len(self.cells))):
                    self.cells[i] = " "
            else:
                self.cells.clear()
        elif final == "G":
            self.col = max(0, (count or 1) - 1)
        elif final == "C":
            self.col += count or 1
        elif final == "D":
            self.col = max(0, self.col - (count or 1))
        # Anything else moves between rows or clears the screen: not replayable on one row.

    def _keep(self, seq: str) -> None:
        self.styled = True
        self.pending = (self.pending + seq)[-_MAX_CELL_ESCAPES:]

    def text(self) -> str:
        """What the row shows, with its colours when kept (reset at the end if any were set)."""
        out = "".join(self.cells)
        if self.colour and self.styled:
            out += self.pending + "\x1b[0m"
        return out


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def render_line(line: bytes, colour: bool) -> bytes:
    """One line (no newline) as a screen shows it: redraws collapsed; colours kept or dropped."""
    if not _NEEDS_ANY.search(line):
        return _INVISIBLE.sub(b"", line) if b"\x07" in line else line
    if not _NEEDS_MODEL.search(line):  # only colours
        return line if colour else strip_escapes(line)
    state = LineState(colour)
    state.feed(_decode(line))
    return _encode(state.text())


# C1 controls (U+0080-U+009F: CSI is U+009B), as UTF-8 or as lone bytes that are not UTF-8.
_MAYBE_C1 = re.compile(rb"[\x80-\x9f]")
_C1 = {c: f"\\x{c:02x}" for c in range(0x80, 0xA0)}
_C1.update({0xDC00 + c: f"\\x{c:02x}" for c in range(0x80, 0xA0)})  # lone bytes (surrogates)


def escape_c1(line: bytes) -> bytes:
    """``line`` with C1 control characters shown as ``\\x9b``: a terminal acts on them as it
    does on ESC sequences (U+009B starts one). The log file keeps every byte; ``--raw`` too."""
    if not _MAYBE_C1.search(line):  # every C1 form has such a byte: most lines stop here
        return line
    return _encode(_decode(line).translate(_C1))


def render(data: bytes, colour: bool) -> bytes:
    """Whole lines (and a last partial one) as a screen shows them."""
    if not _NEEDS_ANY.search(data):
        return data
    return b"\n".join(render_line(line, colour) for line in data.split(b"\n"))


def compact(line: bytes) -> bytes:
    """An unfinished line kept bounded: past :data:`COMPACT_AT`, what it shows replaces its
    redraw history (cut at its last carriage return, where the cursor is back at the start)."""
    if len(line) <= COMPACT_AT:
        return line
    cut = line.rfind(b"\r")
    if cut <= 0:
        return line
    state = LineState(colour=True)
    state.feed(_decode(line[:cut]))
    return _encode("".join(state.cells) + state.pending) + line[cut:]


def last_line(data: bytes) -> bytes:
    """The last non-empty line of ``data`` as it shows (plain), for one-line summaries."""
    for line in reversed(data.split(b"\n")):
        shown = render_line(line, colour=False).strip()
        if shown:
            return shown
    return b""


class TagMode(str, Enum):
    """How a view of a log of several processes shows ranks' tags."""

    #: As on the job's pane: rank 0 untagged, other ranks tagged, the launcher's lines as written.
    PANE = "pane"
    #: Every line labelled: ``[rank N]``, ``[handyjobs]``, or ``[launcher]`` (torchrun itself).
    PREFIX = "prefix"
    #: The file as it is.
    RAW = "raw"


def retag(line: bytes, mode: TagMode, single: bool = False) -> bytes:
    """A log line (without its newline) with rank tags shown as ``mode`` says.

    ``single``: the log of a job of one process, whose lines carry no tags (all are rank 0's).
    """
    if mode is TagMode.RAW:
        return line
    if mode is TagMode.PANE:
        return line[9:] if line.startswith(b"[rank 0] ") else line
    if line.startswith(HANDYJOBS_PREFIX) or TAG_RE.match(line):
        return line
    if single:
        return b"[rank 0] " + line
    return b"[launcher] " + line


class Renderer:
    """Rendering for a stream (``logs -f``): whole lines as they complete.

    With ``live`` (a terminal), the line still being written is shown as it stands and
    redrawn in place, so a progress bar moves as it did on the job's own screen.
    """

    def __init__(
        self,
        colour: bool,
        live: bool = False,
        mode: TagMode = TagMode.PANE,
        single: bool = False,
        raw: bool = False,
    ) -> None:
        """Set how lines are shown; nothing is buffered yet."""
        self.colour, self.live, self.mode, self.single, self.raw = colour, live, mode, single, raw
        self.buf = b""
        self.shown_partial = b""

    def feed(self, data: bytes) -> bytes:
        """Take new bytes; return what to print now."""
        if self.raw:
            return data
        self.buf += data
        out: list[bytes] = []
        if b"\n" in self.buf:
            head, _, self.buf = self.buf.rpartition(b"\n")
            lines = [self._show(line) for line in head.split(b"\n")]
            if self.shown_partial:  # the first line takes the place of what was shown of it
                lines[0] = b"\r" + lines[0] + b"\x1b[K"
                self.shown_partial = b""
            out.append(b"\n".join(lines) + b"\n")
        self._compact()
        if self.live and self.buf:
            now = self._show(self.buf)
            if now != self.shown_partial:
                out.append(b"\r" + now + b"\x1b[K")
                self.shown_partial = now
        return b"".join(out)

    def finish(self) -> bytes:
        """What is left at the end: the last line, unfinished, as it stands."""
        if self.raw or not self.buf:
            return b""
        now = self._show(self.buf)
        self.buf = b""
        if self.shown_partial:
            return b"\r" + now + b"\x1b[K\n"
        return now

    def _show(self, line: bytes) -> bytes:
        return escape_c1(render_line(retag(line, self.mode, self.single), self.colour))

    def _compact(self) -> None:
        self.buf = compact(self.buf)


class PaneFilter:
    """The pane's view of a stream of tagged lines: rank 0's tag removed as lines go by.

    The stream may be cut anywhere; only the few bytes that may still become the tag are
    held back, so partial lines of the launcher reach the pane at once.
    """

    TAG = b"[rank 0] "

    def __init__(self) -> None:
        """At the start of a line, nothing held."""
        self.at_line_start = True
        self.held = b""

    def feed(self, data: bytes) -> bytes:
        """Bytes for the pane, out of ``data`` from the job's terminal."""
        out = bytearray()
        for piece in _pieces(self.held + data):
            self.held = b""
            was_start = self.at_line_start
            if was_start and len(piece) < len(self.TAG) and self.TAG.startswith(piece):
                self.held = piece  # may still become the tag: wait for more
                return bytes(out)
            self.at_line_start = piece.endswith(b"\n")
            if was_start and piece.startswith(self.TAG):
                piece = piece[len(self.TAG) :]
            out += piece
        return bytes(out)


def _pieces(data: bytes) -> Iterator[bytes]:
    """``data`` cut after each newline (the last piece may be partial)."""
    start = 0
    while True:
        end = data.find(b"\n", start)
        if end < 0:
            if start < len(data):
                yield data[start:]
            return
        yield data[start : end + 1]
        start = end + 1
