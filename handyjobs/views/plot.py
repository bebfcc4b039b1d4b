"""Curves drawn in the terminal with braille dots (2x4 per character), several series overlaid.

Pure drawing: :func:`layout` scales series onto a grid, :func:`chart_lines` turns it into
lines of ``(text, colour index)`` pieces that the CLI prints with rich (colours follow
``NO_COLOR`` and the terminal), and :func:`picture` draws the same chart as pixels for
``plot --png`` (:mod:`handyjobs.views.png` encodes them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from handyjobs.views.curves import Point

#: Styles of the series, in order (rich colour names), and the same as RGB for pictures.
COLOURS = ("cyan", "magenta", "yellow", "green", "red", "blue", "bright_white", "bright_black")
RGB = (
    (0, 150, 200),
    (200, 0, 160),
    (220, 160, 0),
    (0, 160, 60),
    (220, 40, 40),
    (40, 80, 220),
    (90, 90, 90),
    (150, 150, 150),
)
# Braille dot bits by (column, row) inside one character cell.
_DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))


@dataclass(frozen=True)
class Series:
    """One curve: its label and its points (x ascending)."""

    label: str
    points: Sequence[Point]


@dataclass(frozen=True)
class Frame:
    """The ranges the chart shows (y already on the log scale with ``log_y``)."""

    x0: float
    x1: float
    y0: float
    y1: float
    log_y: bool

    def y_value(self, y: float) -> float:
        """A y on the chart back to the metric's own value."""
        return 10**y if self.log_y else y


def frame(series: Sequence[Series], log_y: bool) -> Frame | None:
    """The x and y ranges that hold every point (None when there is nothing to draw)."""
    xs = [x for s in series for x, _ in s.points]
    ys = [t for s in series for _, y in s.points if (t := _y(y, log_y)) is not None]
    if not xs or not ys:
        return None
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    if y0 == y1:
        pad = abs(y0) * 0.1 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    return Frame(x0, x1, y0, y1, log_y)


def _y(y: float, log_y: bool) -> float | None:
    if not log_y:
        return y
    return math.log10(y) if y > 0 else None


def _pixels(points: Sequence[Point], box: Frame, width: int, height: int) -> list[tuple[int, int]]:
    """Points as pixels on a ``width`` x ``height`` grid (y down), joined by straight lines."""
    out: list[tuple[int, int]] = []
    prev: tuple[int, int] | None = None
    for x, y in points:
        ty = _y(y, box.log_y)
        if ty is None:
            prev = None  # a gap: log scale cannot show 0 or less
            continue
        px = round((x - box.x0) / (box.x1 - box.x0) * (width - 1))
        py = round((box.y1 - ty) / (box.y1 - box.y0) * (height - 1))
        here = (min(max(px, 0), width - 1), min(max(py, 0), height - 1))
        if prev is None:
            out.append(here)
        else:
            out.extend(_segment(prev, here))
        prev = here
    return out


def _segment(a: tuple[int, int], b: tuple[int, int]) -> list[tuple[int, int]]:
    """Pixels from a (excluded) to b (included) along a straight line."""
    steps = max(abs(b[0] - a[0]), abs(b[1] - a[1]))
    if steps == 0:
        return [b]
    return [
        (a[0] + round((b[0] - a[0]) * i / steps), a[1] + round((b[1] - a[1]) * i / steps))
        for i in range(1, steps + 1)
    ]


def tick(value: float) -> str:
    """A short label for a tick: ``0.523``, ``1.2e+04``, ``120``."""
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4g}"


Piece = tuple[str, int | None]  # text and the index of its series' colour (None: axis)


def chart_lines(
    series: Sequence[Series], width: int, height: int, log_y: bool
) -> list[list[Piece]]:
    """The chart as lines of coloured pieces: y labels, braille plot area, x axis and labels."""
    box = frame(series, log_y)
    if box is None:
        return []
    last = height - 1
    labels = {
        row: tick(box.y_value(box.y1 - (box.y1 - box.y0) * row / max(last, 1)))
        for row in sorted({0, last // 4, last // 2, 3 * last // 4, last})
    }
    label_w = max(len(t) for t in labels.values())
    plot_w = max(10, width - label_w - 2)
    dots = [[0] * plot_w for _ in range(height)]
    owner: list[list[int | None]] = [[None] * plot_w for _ in range(height)]
    for index, s in enumerate(series):
        for px, py in _pixels(s.points, box, plot_w * 2, height * 4):
            col, row = px // 2, py // 4
            dots[row][col] |= _DOTS[px % 2][py % 4]
            owner[row][col] = index
    lines: list[list[Piece]] = []
    for row in range(height):
        label = labels.get(row, "")
        pieces: list[Piece] = [(label.rjust(label_w) + (" ┤" if label else " │"), None)]
        for col in range(plot_w):
            mask = dots[row][col]
            pieces.append((chr(0x2800 + mask) if mask else " ", owner[row][col]))
        lines.append(_merge(pieces))
    lines.append([(" " * label_w + " └" + "─" * plot_w, None)])
    left, mid, right = tick(box.x0), tick((box.x0 + box.x1) / 2), tick(box.x1)
    axis = [" "] * plot_w
    for at, text in ((0, left), ((plot_w - len(mid)) // 2, mid), (plot_w - len(right), right)):
        for i, ch in enumerate(text):
            if 0 <= at + i < plot_w:
                axis[at + i] = ch
    lines.append([(" " * (label_w + 2) + "".join(axis), None)])
    return lines


def _merge(pieces: list[Piece]) -> list[Piece]:
    """Neighbouring pieces of one colour as one (fewer style changes to print)."""
    out: list[Piece] = []
    for text, colour in pieces:
        if out and out[-1][1] == colour:
            out[-1] = (out[-1][0] + text, colour)
        else:
            out.append((text, colour))
    return out


# ---- pictures ------------------------------------------------------------------------------

# A 3x5 pixel font: enough for labels (digits, letters, a few signs); capitals are drawn small.
_FONT = {
    "0": "###|#.#|#.#|#.#|###",
    "1": ".#.|##.|.#.|.#.|###",
    "2": "###|..#|###|#..|###",
    "3": "###|..#|###|..#|###",
    "4": "#.#|#.#|###|..#|..#",
    "5": "###|#..|###|..#|###",
    "6": "###|#..|###|#.#|###",
    "7": "###|..#|..#|.#.|.#.",
    "8": "###|#.#|###|#.#|###",
    "9": "###|#.#|###|..#|###",
    "a": ".#.|#.#|###|#.#|#.#",
    "b": "##.|#.#|##.|#.#|##.",
    "c": ".##|#..|#..|#..|.##",
    "d": "##.|#.#|#.#|#.#|##.",
    "e": "###|#..|##.|#..|###",
    "f": "###|#..|##.|#..|#..",
    "g": ".##|#..|#.#|#.#|.##",
    "h": "#.#|#.#|###|#.#|#.#",
    "i": "###|.#.|.#.|.#.|###",
    "j": "..#|..#|..#|#.#|.#.",
    "k": "#.#|#.#|##.|#.#|#.#",
    "l": "#..|#..|#..|#..|###",
    "m": "#.#|###|###|#.#|#.#",
    "n": "##.|#.#|#.#|#.#|#.#",
    "o": ".#.|#.#|#.#|#.#|.#.",
    "p": "##.|#.#|##.|#..|#..",
    "q": ".#.|#.#|#.#|##.|.##",
    "r": "##.|#.#|##.|#.#|#.#",
    "s": ".##|#..|.#.|..#|##.",
    "t": "###|.#.|.#.|.#.|.#.",
    "u": "#.#|#.#|#.#|#.#|###",
    "v": "#.#|#.#|#.#|#.#|.#.",
    "w": "#.#|#.#|###|###|#.#",
    "x": "#.#|#.#|.#.|#.#|#.#",
    "y": "#.#|#.#|.#.|.#.|.#.",
    "z": "###|..#|.#.|#..|###",
    ".": "...|...|...|...|.#.",
    "-": "...|...|###|...|...",
    "+": "...|.#.|###|.#.|...",
    "_": "...|...|...|...|###",
    ":": "...|.#.|...|.#.|...",
    "/": "..#|..#|.#.|#..|#..",
    "%": "#.#|..#|.#.|#..|#.#",
    "(": ".#.|#..|#..|#..|.#.",
    ")": ".#.|..#|..#|..#|.#.",
    " ": "...|...|...|...|...",
    "?": "###|..#|.#.|...|.#.",
    ",": "...|...|...|.#.|#..",
    "=": "...|###|...|###|...",
    "[": "##.|#..|#..|#..|##.",
    "]": ".##|..#|..#|..#|.##",
}
_SCALE = 2  # font pixels per glyph pixel


class Canvas:
    """An RGB picture to draw the chart on."""

    def __init__(self, width: int, height: int) -> None:
        """A white picture."""
        self.width, self.height = width, height
        self.pixels = bytearray(b"\xff" * (width * height * 3))

    def dot(self, x: int, y: int, rgb: tuple[int, int, int], size: int = 1) -> None:
        """A square of ``size`` pixels at (x, y), clipped to the picture."""
        for dy in range(size):
            for dx in range(size):
                px, py = x + dx, y + dy
                if 0 <= px < self.width and 0 <= py < self.height:
                    at = (py * self.width + px) * 3
                    self.pixels[at : at + 3] = bytes(rgb)

    def line(
        self, a: tuple[int, int], b: tuple[int, int], rgb: tuple[int, int, int], size: int = 1
    ) -> None:
        """A straight line from a to b."""
        self.dot(a[0], a[1], rgb, size)
        for x, y in _segment(a, b):
            self.dot(x, y, rgb, size)

    def text(self, x: int, y: int, text: str, rgb: tuple[int, int, int] = (40, 40, 40)) -> None:
        """``text`` with its top left at (x, y), in the small font."""
        for i, ch in enumerate(text.lower()):
            rows = _FONT.get(ch, _FONT["?"]).split("|")
            for gy, row in enumerate(rows):
                for gx, on in enumerate(row):
                    if on == "#":
                        self.dot(x + (i * 4 + gx) * _SCALE, y + gy * _SCALE, rgb, _SCALE)


def text_width(text: str) -> int:
    """Pixels ``text`` takes in the small font."""
    return len(text) * 4 * _SCALE


def picture(
    series: Sequence[Series], title: str, log_y: bool, width: int = 900, height: int = 540
) -> Canvas:
    """The chart as a picture: axes, grid, ticks, curves and a legend."""
    canvas = Canvas(width, height)
    box = frame(series, log_y)
    left, right, top, bottom = 90, 24, 40, 50
    canvas.text(left, 12, title)
    if box is None:
        canvas.text(left, top, "no points to draw")
        return canvas
    x_a, x_b, y_a, y_b = left, width - right, top, height - bottom
    grey, axis = (225, 225, 225), (60, 60, 60)
    for i in range(5):
        gy = y_a + (y_b - y_a) * i // 4
        gx = x_a + (x_b - x_a) * i // 4
        canvas.line((x_a, gy), (x_b, gy), grey)
        canvas.line((gx, y_a), (gx, y_b), grey)
        label = tick(box.y_value(box.y1 - (box.y1 - box.y0) * i / 4))
        canvas.text(x_a - 8 - text_width(label), gy - 5, label)
        xl = tick(box.x0 + (box.x1 - box.x0) * i / 4)
        canvas.text(gx - text_width(xl) // 2, y_b + 10, xl)
    canvas.text((x_a + x_b) // 2 - text_width("step") // 2, y_b + 30, "step")
    canvas.line((x_a, y_a), (x_a, y_b), axis)
    canvas.line((x_a, y_b), (x_b, y_b), axis)
    for index, s in enumerate(series):
        rgb = RGB[index % len(RGB)]
        pts = _pixels(s.points, box, x_b - x_a + 1, y_b - y_a + 1)
        for px, py in pts:
            canvas.dot(x_a + px, y_a + py, rgb, 2)
        ly = y_a + 8 + index * 16
        lx = x_b - 12 - max(text_width(t.label) for t in series) - 28
        if index == 0:  # a white box behind the legend, so curves do not run through it
            for y in range(y_a + 2, y_a + 14 + 16 * len(series)):
                canvas.line((lx - 6, y), (x_b - 2, y), (255, 255, 255))
        canvas.line((lx, ly + 4), (lx + 20, ly + 4), rgb, 3)
        canvas.text(lx + 28, ly, s.label, rgb)
    return canvas
