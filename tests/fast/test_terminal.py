"""handyjobs.jobside.terminal: logs shown as a terminal showed them; case tables and streams."""

from __future__ import annotations

import random

import pytest

from handyjobs.jobside.terminal import (
    COMPACT_AT,
    PaneFilter,
    Renderer,
    TagMode,
    compact,
    last_line,
    render,
    render_line,
    retag,
    split_tag,
    strip_escapes,
    tag_line,
)

RED = b"\x1b[31m"
RESET = b"\x1b[0m"


@pytest.mark.parametrize(
    ("line", "plain", "coloured"),
    [
        (b"plain text", b"plain text", b"plain text"),
        (b"10%\r50%\r100%", b"100%", b"100%"),
        # a shorter redraw leaves the tail of the longer one, as on a screen
        (b"abcdef\rxy", b"xycdef", b"xycdef"),
        (b"abcdef\rxy\x1b[K", b"xy", b"xy"),
        (b"abcdef\r\x1b[2Kxy", b"xy", b"xy"),
        (b"abcdef\x1b[3G\x1b[1K", b"   def", b"   def"),
        (b"ab\x08c", b"ac", b"ac"),
        (b"a\tb", b"a\tb", b"a\tb"),  # nothing to replay: the tab stays a tab
        (b"a\tb\rA", b"A       b", b"A       b"),
        (b"ring\x07", b"ring", b"ring"),
        (RED + b"red" + RESET + b" plain", b"red plain", RED + b"red" + RESET + b" plain"),
        # rich: hide the cursor, redraw, show it again; colours survive the redraw
        (
            b"\x1b[?25l\r\x1b[2K"
            + RED
            + b"1/4"
            + RESET
            + b"\r\x1b[2K"
            + RED
            + b"4/4"
            + RESET
            + b"\x1b[?25h",
            b"4/4",
            RED + b"4" + b"/4" + RESET + RESET,
        ),
        (b"ends in crlf\r", b"ends in crlf", b"ends in crlf"),
        (b"up\x1b[1Aand on", b"upand on", b"upand on"),  # rows cannot be replayed: dropped
        (b"link \x1b]8;;http://x\x1b\\here\x1b]8;;\x1b\\", b"link here", None),
        ("naïve ✓\r✓".encode(), "✓aïve ✓".encode(), "✓aïve ✓".encode()),
        (b"bad \xff\xfe bytes\rBAD", b"BAD \xff\xfe bytes", b"BAD \xff\xfe bytes"),
    ],
)
def test_render_line(line: bytes, plain: bytes, coloured: bytes | None) -> None:
    assert render_line(line, colour=False) == plain
    if coloured is not None:
        shown = render_line(line, colour=True)
        assert strip_escapes(shown) == plain
        if RED in line and b"\r" not in line:
            assert shown == coloured


def test_render_keeps_lines_and_the_last_partial_one() -> None:
    data = b"epoch 1\r" + b"epoch 1 done\nnext\npartial\rPART"
    assert render(data, colour=False) == b"epoch 1 done\nnext\nPARTial"
    assert render(b"no controls\nat all\n", colour=False) == b"no controls\nat all\n"


def test_last_line_skips_blank_lines_and_shows_the_redraw() -> None:
    assert last_line(b"a\nstep 1\rstep 2\n\n  \n") == b"step 2"
    assert last_line(b"") == b""


def test_tags() -> None:
    assert tag_line(3, b"hello") == b"[rank 3] hello"
    assert split_tag(b"[rank 12] x y") == (12, b"x y")
    assert split_tag(b"[rank x] y") == (None, b"[rank x] y")
    assert retag(b"[rank 0] a", TagMode.PANE) == b"a"
    assert retag(b"[rank 1] a", TagMode.PANE) == b"[rank 1] a"
    assert retag(b"torchrun says", TagMode.PREFIX) == b"[launcher] torchrun says"
    assert retag(b"[handyjobs] run 1", TagMode.PREFIX) == b"[handyjobs] run 1"
    assert retag(b"one process", TagMode.PREFIX, single=True) == b"[rank 0] one process"
    assert retag(b"[rank 0] a", TagMode.RAW) == b"[rank 0] a"


def test_renderer_shows_whole_lines_and_a_live_partial_one() -> None:
    view = Renderer(colour=False, live=True)
    assert view.feed(b"bar 1\r") == b"\rbar 1\x1b[K"
    # the finished line takes the place of the live one, the next partial is shown live
    assert view.feed(b"bar 2\rbar 3\nnext\nx") == b"\rbar 3\x1b[K\nnext\n\rx\x1b[K"
    assert view.finish() == b"\rx\x1b[K\n"
    quiet = Renderer(colour=False)
    assert quiet.feed(b"a\rb") == b""
    assert quiet.feed(b"c\nd") == b"bc\n"
    assert quiet.finish() == b"d"


def test_renderer_raw_passes_bytes() -> None:
    view = Renderer(colour=False, raw=True)
    assert view.feed(b"[rank 0] a\rb\n") == b"[rank 0] a\rb\n"
    assert view.finish() == b""


def test_renderer_stream_equals_render_of_the_whole(tmp_path: object) -> None:
    rng = random.Random(3)
    pieces = [b"step ", b"\r", b"\n", RED, RESET, b"[rank 0] ", b"[rank 1] ", b"x" * 5, b"\x1b[K"]
    for _ in range(50):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 80)))
        view = Renderer(colour=False)
        out = b""
        pos = 0
        while pos < len(data):
            step = rng.randrange(1, 9)
            out += view.feed(data[pos : pos + step])
            pos += step
        out += view.finish()
        whole = b"\n".join(
            render_line(retag(line, TagMode.PANE), colour=False) for line in data.split(b"\n")
        )
        assert out == whole, data


def test_an_endless_redraw_stays_bounded() -> None:
    view = Renderer(colour=False)
    for i in range(50_000):
        view.feed(b"\rstep %06d of 50000" % i)
    assert len(view.buf) < COMPACT_AT + 100
    assert view.finish() == b"step 049999 of 50000"
    line = b"abcdef" + b"\rxy" * 40_000
    assert render_line(compact(line), colour=False) == render_line(line, colour=False) == b"xycdef"


def test_pane_filter_strips_rank_0_tags_however_the_stream_is_cut() -> None:
    stream = (
        b"launcher line\n[rank 0] zero\n[rank 1] one\n[rank 0] \n[ran not a tag\n"
        b"partial [rank 0] mid\n[rank 0] last"
    )
    expected = b"launcher line\nzero\n[rank 1] one\n\n[ran not a tag\npartial [rank 0] mid\nlast"
    rng = random.Random(5)
    for _ in range(200):
        pane = PaneFilter()
        out = b""
        pos = 0
        while pos < len(stream):
            step = rng.randrange(1, 12)
            out += pane.feed(stream[pos : pos + step])
            pos += step
        assert out == expected
