"""Curves drawn in the terminal with braille dots (2x4 per character), several series overlaid.

Pure drawing: :func:`layout` scales series onto a grid, :func:`chart_lines` turns it into
lines of ``(text, colour index)`` pieces that the CLI prints with rich (colours follow
``NO_COLOR`` and the terminal), and :func:`picture` draws the same chart as pixels for
``plot --png`` (:mod:`handyjobs.views.png` encodes them).

Curves are told apart without colour too (a pipe, a printout, a reader who cannot tell red
from green): each has its marker glyph in the terminal, its dash pattern and marker in the
picture. A value that is not finite (a diverged loss) is no point on the line: it is marked
with a cross at the top of the chart (at the bottom for -inf).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from handyjobs.structs import frozen
from handyjobs.views import font
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
#: The marker of each series (terminal and picture), so curves differ without colour.
MARKS = ("●", "▲", "■", "◆", "✚", "✖", "○", "△")
#: Where a value that is not finite is marked.
NONFINITE_MARK = "\u00d7"  # a multiplication sign: a cross one cell wide
#: The dash pattern of each series in pictures: pixels on (1) and off (0), repeated.
DASHES = ("1", "1" * 12 + "0" * 6, "11" + "0" * 4, "1" * 12 + "0" * 4 + "11" + "0" * 4)
# Braille dot bits by (column, row) inside one character cell.
_DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))


@frozen
class Series:
    """One curve: its label, its points (x ascending) and the metric they are values of."""

    label: str
    points: Sequence[Point]
    metric: str = ""


@frozen
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
    if not math.isfinite(y):
        return None  # marked apart, never on the line
    if not log_y:
        return y
    return math.log10(y) if y > 0 else None


def _column(x: float, box: Frame, width: int) -> int:
    px = round((x - box.x0) / (box.x1 - box.x0) * (width - 1))
    return min(max(px, 0), width - 1)


def _pixels(points: Sequence[Point], box: Frame, width: int, height: int) -> list[tuple[int, int]]:
    """Points as pixels on a ``width`` x ``height`` grid (y down), joined by straight lines."""
    out: list[tuple[int, int]] = []
    prev: tuple[int, int] | None = None
    for x, y in points:
        ty = _y(y, box.log_y)
        if ty is None:
            prev = None  # a gap: not finite, or 0 or less on a log scale
            continue
        py = round((box.y1 - ty) / (box.y1 - box.y0) * (height - 1))
        here = (_column(x, box, width), min(max(py, 0), height - 1))
        if prev is None:
            out.append(here)
        else:
            out.extend(_segment(prev, here))
        prev = here
    return out


def nonfinite_marks(
    points: Sequence[Point], box: Frame, width: int, height: int
) -> list[tuple[int, int]]:
    """Where the points that are not finite are marked: at the top (NaN, inf), bottom (-inf)."""
    return [
        (_column(x, box, width), height - 1 if y < 0 else 0)
        for x, y in points
        if not math.isfinite(y)
    ]


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


def nice_ticks(lo: float, hi: float, most: int = 6) -> list[float]:
    """Round values between lo and hi (1, 2 or 5 times a power of ten apart), at most ``most``."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(most - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    count = math.floor((hi - first) / step + 1e-9) + 1
    # round() drops the float noise of first + i * step (0.30000000000000004).
    return [round(first + i * step, 12) for i in range(count)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Round values of a log axis given as powers of ten: 1, 10, 100 (or 1, 2, 5 when close)."""
    decades = [float(d) for d in range(math.ceil(lo - 1e-9), math.floor(hi + 1e-9) + 1)]
    if len(decades) >= 3:
        return decades
    fine = [
        math.log10(m * 10**d)
        for d in range(math.floor(lo) - 1, math.ceil(hi) + 1)
        for m in (1, 2, 5)
    ]
    inside = [t for t in fine if lo - 1e-9 <= t <= hi + 1e-9]
    if len(inside) >= 2:
        return inside
    # Less than a factor of 5 from end to end: round values as on a linear axis.
    return [math.log10(v) for v in nice_ticks(10**lo, 10**hi) if v > 0]


Piece = tuple[str, int | None]  # text and the index of its series' colour (None: axis)


def _grid(
    series: Sequence[Series], box: Frame, plot_w: int, height: int
) -> tuple[list[list[str]], list[list[int | None]]]:
    """The plot area's cells: braille for the lines, then each series' markers and crosses."""
    dots = [[0] * plot_w for _ in range(height)]
    owner: list[list[int | None]] = [[None] * plot_w for _ in range(height)]
    cells_of: list[dict[int, int]] = []
    for index, s in enumerate(series):
        cells: dict[int, int] = {}
        for px, py in _pixels(s.points, box, plot_w * 2, height * 4):
            col, row = px // 2, py // 4
            dots[row][col] |= _DOTS[px % 2][py % 4]
            owner[row][col] = index
            cells.setdefault(col, row)
        cells_of.append(cells)
    text = [[chr(0x2800 + m) if m else " " for m in row] for row in dots]
    spacing = max(6, plot_w // 6)
    for index, cells in enumerate(cells_of):
        # Markers a few columns apart, shifted per series so two curves' markers do not meet.
        for col in range(index * 3 % spacing + 1, plot_w, spacing):
            if col in cells:
                text[cells[col]][col] = MARKS[index % len(MARKS)]
                owner[cells[col]][col] = index
    for index, s in enumerate(series):
        for col, row in nonfinite_marks(s.points, box, plot_w, height):
            text[row][col], owner[row][col] = NONFINITE_MARK, index
    return text, owner


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
    text, owner = _grid(series, box, plot_w, height)
    lines: list[list[Piece]] = []
    for row in range(height):
        label = labels.get(row, "")
        pieces: list[Piece] = [(label.rjust(label_w) + (" ┤" if label else " │"), None)]
        pieces += [(text[row][col], owner[row][col]) for col in range(plot_w)]
        lines.append(_merge(pieces))
    lines.append([(" " * label_w + " └" + "─" * plot_w, None)])
    left, mid, right = tick(box.x0), tick((box.x0 + box.x1) / 2), tick(box.x1)
    axis = [" "] * plot_w
    for at, label in ((0, left), ((plot_w - len(mid)) // 2, mid), (plot_w - len(right), right)):
        for i, ch in enumerate(label):
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

_SCALE = 2  # picture pixels per font pixel
RGBColour = tuple[int, int, int]


class Canvas:
    """An RGB picture to draw the chart on."""

    def __init__(self, width: int, height: int) -> None:
        """A white picture."""
        self.width, self.height = width, height
        self.pixels = bytearray(b"\xff" * (width * height * 3))

    def dot(self, x: int, y: int, rgb: RGBColour, size: int = 1) -> None:
        """A square of ``size`` pixels at (x, y), clipped to the picture."""
        for dy in range(size):
            for dx in range(size):
                px, py = x + dx, y + dy
                if 0 <= px < self.width and 0 <= py < self.height:
                    at = (py * self.width + px) * 3
                    self.pixels[at : at + 3] = bytes(rgb)

    def line(self, a: tuple[int, int], b: tuple[int, int], rgb: RGBColour, size: int = 1) -> None:
        """A straight line from a to b."""
        self.dot(a[0], a[1], rgb, size)
        for x, y in _segment(a, b):
            self.dot(x, y, rgb, size)

    def text(self, x: int, y: int, text: str, rgb: RGBColour = (40, 40, 40)) -> None:
        """``text`` with its top left at (x, y), in the 5x7 font, case kept."""
        for i, ch in enumerate(text):
            for gx, gy in font.pixels(ch):
                self.dot(x + (i * font.ADVANCE + gx) * _SCALE, y + gy * _SCALE, rgb, _SCALE)

    def mark(self, kind: int, x: int, y: int, rgb: RGBColour) -> None:
        """Series ``kind``'s marker centred on (x, y): circle, triangle, square, diamond, ..."""
        shape = kind % 6
        for dy in range(-4, 5):
            for dx in range(-4, 5):
                inside = (
                    dx * dx + dy * dy <= 16,  # disc
                    dy >= -3 and abs(dx) * 2 <= dy + 4,  # triangle
                    abs(dx) <= 3 and abs(dy) <= 3,  # square
                    abs(dx) + abs(dy) <= 4,  # diamond
                    abs(dx) <= 1 or abs(dy) <= 1,  # plus
                    abs(abs(dx) - abs(dy)) <= 1,  # cross
                )[shape]
                if inside:
                    self.dot(x + dx, y + dy, rgb)


def text_width(text: str) -> int:
    """Pixels ``text`` takes in the font."""
    return len(text) * font.ADVANCE * _SCALE


TEXT_HEIGHT = 7 * _SCALE


def picture(
    series: Sequence[Series],
    title: str,
    log_y: bool,
    width: int = 900,
    height: int = 540,
    x_label: str = "step",
) -> Canvas:
    """The chart as a picture: axes, round ticks and grid, curves and a legend."""
    canvas = Canvas(width, height)
    box = frame(series, log_y)
    canvas.text(16, 12, title)
    if box is None:
        canvas.text(16, 50, "no points to draw")
        return canvas
    box = _rounded(box)
    ys = log_ticks(box.y0, box.y1) if log_y else nice_ticks(box.y0, box.y1, 8)
    y_labels = [tick(box.y_value(t)) for t in ys]
    left = 24 + max(text_width(t) for t in y_labels)
    x_a, x_b, y_a, y_b = left, width - 24, 44, height - 64
    grey, axis = (225, 225, 225), (60, 60, 60)

    def to_x(v: float) -> int:
        return x_a + round((v - box.x0) / (box.x1 - box.x0) * (x_b - x_a))

    def to_y(v: float) -> int:
        return y_a + round((box.y1 - v) / (box.y1 - box.y0) * (y_b - y_a))

    for t, label in zip(ys, y_labels, strict=True):
        if box.y0 - 1e-9 <= t <= box.y1 + 1e-9:
            canvas.line((x_a, to_y(t)), (x_b, to_y(t)), grey)
            canvas.text(x_a - 10 - text_width(label), to_y(t) - TEXT_HEIGHT // 2, label)
    for t in nice_ticks(box.x0, box.x1, 7):
        canvas.line((to_x(t), y_a), (to_x(t), y_b), grey)
        canvas.text(to_x(t) - text_width(tick(t)) // 2, y_b + 10, tick(t))
    canvas.text((x_a + x_b) // 2 - text_width(x_label) // 2, y_b + 36, x_label)
    canvas.line((x_a, y_a), (x_a, y_b), axis)
    canvas.line((x_a, y_b), (x_b, y_b), axis)
    for index, s in enumerate(series):
        _draw_series(canvas, index, s, box, (x_a, y_a, x_b, y_b))
    _legend(canvas, series, (x_a, y_a, x_b, y_b))
    return canvas


def _rounded(box: Frame) -> Frame:
    """The frame widened to round values at both ends (a linear axis from 0 to 3, not from
    0.013 to 2.61), so the first and last ticks sit on the axes' ends."""

    def widen(lo: float, hi: float, most: int) -> tuple[float, float]:
        ticks = nice_ticks(lo, hi, most)
        if len(ticks) < 2:
            return lo, hi
        step = ticks[1] - ticks[0]
        return math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step

    x0, x1 = widen(box.x0, box.x1, 7)
    y0, y1 = (box.y0, box.y1) if box.log_y else widen(box.y0, box.y1, 8)
    return Frame(x0, x1, y0, y1, box.log_y)


def _draw_series(
    canvas: Canvas, index: int, s: Series, box: Frame, area: tuple[int, int, int, int]
) -> None:
    """One curve: its dash pattern, its markers, crosses where it is not finite."""
    x_a, y_a, x_b, y_b = area
    rgb = RGB[index % len(RGB)]
    dash = DASHES[index % len(DASHES)]
    pts = _pixels(s.points, box, x_b - x_a + 1, y_b - y_a + 1)
    for i, (px, py) in enumerate(pts):
        if dash[i % len(dash)] == "1":
            canvas.dot(x_a + px, y_a + py, rgb, 2)
    spacing = max((x_b - x_a) // 8, 20)
    seen: set[int] = set()
    for px, py in pts:
        slot = (px + index * spacing // len(RGB)) // spacing
        if slot not in seen:  # one marker per slot of the x axis, shifted per series
            seen.add(slot)
            canvas.mark(index, x_a + px, y_a + py, rgb)
    for px, py in nonfinite_marks(s.points, box, x_b - x_a + 1, y_b - y_a + 1):
        # NaN and inf in a band above the plot (-inf: along its floor), clear of the legend.
        x, y = x_a + px, (y_a - 10 if py == 0 else y_b - 6)
        canvas.line((x - 5, y - 5), (x + 5, y + 5), RGB[4], 2)
        canvas.line((x - 5, y + 5), (x + 5, y - 5), RGB[4], 2)


def _legend(canvas: Canvas, series: Sequence[Series], area: tuple[int, int, int, int]) -> None:
    """Each curve's sample (colour, dashes, marker) and label, in a white box at the top right."""
    _, y_a, x_b, _ = area
    row = TEXT_HEIGHT + 8
    lx = x_b - 16 - max(text_width(_legend_label(s)) for s in series) - 56
    for y in range(y_a + 2, y_a + 12 + row * len(series)):
        canvas.line((lx - 8, y), (x_b - 2, y), (255, 255, 255))
    for index, s in enumerate(series):
        rgb = RGB[index % len(RGB)]
        dash = DASHES[index % len(DASHES)]
        ly = y_a + 10 + index * row
        for i in range(44):
            if dash[i % len(dash)] == "1":
                canvas.dot(lx + i, ly + TEXT_HEIGHT // 2 - 1, rgb, 2)
        canvas.mark(index, lx + 22, ly + TEXT_HEIGHT // 2, rgb)
        canvas.text(lx + 56, ly, _legend_label(s), rgb)


def _legend_label(s: Series) -> str:
    """A curve's label, and where it stopped being finite: ``lr=3e-3 (NaN from 800)``."""
    bad = next((p for p in s.points if not math.isfinite(p[1])), None)
    if bad is None:
        return s.label
    word = "NaN" if math.isnan(bad[1]) else f"{bad[1]}"
    return f"{s.label} ({word} from {bad[0]:g})"
