"""Metrics as curves, the terminal chart and the PNG encoder: pure functions, case tables."""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import pytest

from handyjobs.views import curves, png
from handyjobs.views.observe import Progress, whole_run
from handyjobs.views.plot import (
    DASHES,
    MARKS,
    NONFINITE_MARK,
    RGB,
    Series,
    chart_lines,
    frame,
    log_ticks,
    nice_ticks,
    picture,
    tick,
)


def lines(*docs: object) -> list[bytes]:
    return [json.dumps(d).encode() for d in docs]


def test_every_layout_of_a_metrics_line() -> None:
    got = curves.parse(
        [
            *lines(
                {"step": 1, "loss": 2.0, "lr": 0.1, "time": 5.0, "note": "x"},
                {"step": 2, "metrics": {"loss": 1.5, "acc": 0.5}},
                {"step": 3, "name": "loss", "value": 1.0},
                {"loss": 0.5},  # no step: its place among the metric's points
                {"step": 4, "loss": True},  # not a number
                {"step": 5, "loss": float("nan")},  # kept: a diverged loss must show
                {"step": 6, "loss": 9.0, "rank": 1},  # another rank's
                {"step": 7, "values": {"loss": None}, "nonfinite": {"loss": "inf"}},
            ),
            b"not json",
            b'{"step": 8, "loss": 0.2',  # a line still being written
        ]
    )
    loss = got.pop("loss")
    assert math.isnan(loss[4][1]) and loss[4][0] == 5.0 and loss[5] == (7.0, math.inf)
    assert loss[:4] == [(1.0, 2.0), (2.0, 1.5), (3.0, 1.0), (3.0, 0.5)]
    assert got == {
        "lr": [(1.0, 0.1)],
        "acc": [(2.0, 0.5)],
    }


def test_a_later_run_that_starts_over_replaces_the_steps_it_redoes() -> None:
    got = curves.parse(
        lines(
            *({"run": 1, "step": s, "loss": 10 - s} for s in range(6)),
            *({"run": 2, "step": s, "loss": 100 - s} for s in range(3, 5)),  # resumed at 3
        )
    )
    assert got["loss"] == [(0, 10), (1, 9), (2, 8), (3, 97), (4, 96)]


def test_summary_smoothing_and_direction(tmp_path: Path) -> None:
    series = {"loss": [(0.0, 3.0), (1.0, 1.0), (2.0, 2.0)], "val_acc": [(0.0, 0.2), (1.0, 0.9)]}
    loss, acc = curves.summarise(series)
    assert (loss.metric, loss.last, loss.best, loss.best_step) == ("loss", 2.0, 1.0, 1.0)
    assert (acc.metric, acc.best, acc.higher_is_better) == ("val_acc", 0.9, True)
    assert loss.to_dict()["best_is"] == "min" and acc.to_dict()["best_is"] == "max"
    assert curves.smooth(series["loss"], 2) == [(0.0, 3.0), (1.0, 2.0), (2.0, 1.5)]
    assert curves.smooth(series["loss"], 1) == series["loss"]
    for name, higher in (("loss", False), ("top1_accuracy", True), ("f1", True), ("err", False)):
        assert curves.higher_is_better(name) is higher


def test_last_value_reads_from_the_end(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    docs = [{"step": i, "loss": 1 / (i + 1)} for i in range(5000)] + [{"step": 5000, "acc": 0.5}]
    path.write_bytes(b"\n".join(lines(*docs)) + b"\n")
    assert curves.last_value(path, "loss", block=100) == 1 / 5000
    assert curves.last_value(path, "acc", block=100) == 0.5
    assert curves.last_value(path, "nope", block=100) is None
    assert curves.last_value(tmp_path / "missing", "loss") is None
    assert curves.read(tmp_path / "missing") == {}


def test_chart_lines_draw_each_series_in_its_colour() -> None:
    a = Series("a", [(float(x), float(x)) for x in range(50)])
    b = Series("b", [(float(x), 50.0 - x) for x in range(50)])
    drawn = chart_lines([a, b], width=60, height=10, log_y=False)
    assert len(drawn) == 12  # 10 rows, the axis, the x labels
    text = ["".join(t for t, _ in line) for line in drawn]
    assert all(len(t) == len(text[0]) for t in text[:11])
    colours = {c for line in drawn for t, c in line if c is not None and t.strip()}
    assert colours == {0, 1}
    assert text[0].lstrip().startswith("50 ┤") and text[9].lstrip().startswith("0 ┤")
    assert text[11].split() == ["0", "24.5", "49"]
    # both ends of the rising line are drawn: bottom left and top right
    assert text[9][text[9].index("┤") + 1] != " " and text[0].rstrip()[-1] != "┤"


def test_log_scale_skips_what_it_cannot_show() -> None:
    box = frame([Series("a", [(0.0, 0.0), (1.0, 10.0), (2.0, 1000.0)])], log_y=True)
    assert box is not None and (box.y0, box.y1) == (1.0, 3.0)
    assert frame([Series("a", [(0.0, -1.0)])], log_y=True) is None
    assert [tick(v) for v in (0, 0.5234, 123456.0, 0.00001, 42)] == [
        "0",
        "0.5234",
        "1.23e+05",
        "1.00e-05",
        "42",
    ]


def test_png_encodes_a_picture_that_decodes_back() -> None:
    canvas = picture([Series("run-a", [(0.0, 1.0), (10.0, 0.1)])], "loss", False, 120, 80)
    data = png.encode(canvas.width, canvas.height, bytes(canvas.pixels))
    assert png.decode_size(data) == (120, 80)
    # walk the chunks: IHDR, IDAT, IEND with good CRCs; the rows decompress to the pixels
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = body
        pos += 12 + length
    assert list(chunks) == [b"IHDR", b"IDAT", b"IEND"]
    rows = zlib.decompress(chunks[b"IDAT"])
    stride = 120 * 3 + 1
    assert bytes(canvas.pixels) == b"".join(
        rows[y * stride + 1 : (y + 1) * stride] for y in range(80)
    )
    with pytest.raises(ValueError):
        png.encode(2, 2, b"\0" * 5)


def test_smoothing_leaves_a_nan_as_it_is_and_out_of_the_averages() -> None:
    points = [(0.0, 1.0), (1.0, 3.0), (2.0, math.nan), (3.0, 5.0)]
    got = curves.smooth(points, 2)
    assert got[:2] == [(0.0, 1.0), (1.0, 2.0)] and math.isnan(got[2][1]) and got[3] == (3.0, 5.0)


def test_nan_points_are_crosses_and_curves_have_their_own_markers() -> None:
    a = Series("a", [(float(x), float(x)) for x in range(40)] + [(40.0, math.nan)])
    b = Series("b", [(float(x), 20.0 - x / 2) for x in range(41)])
    drawn = chart_lines([a, b], width=60, height=10, log_y=False)
    text = ["".join(t for t, _ in line) for line in drawn]
    assert text[0].rstrip().endswith(NONFINITE_MARK)  # at x=40, on the top row
    marks = {ch: c for line in drawn for t, c in line for ch in t if ch in MARKS}
    assert marks == {MARKS[0]: 0, MARKS[1]: 1}
    assert text[0].lstrip().startswith("39 ┤")  # the NaN does not stretch the y axis


def test_round_ticks() -> None:
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(3.0, 97.0) == [20.0, 40.0, 60.0, 80.0]
    assert nice_ticks(0.0123, 0.0456) == [0.02, 0.03, 0.04]
    assert nice_ticks(1.0, 5000.0, 7) == [1000.0, 2000.0, 3000.0, 4000.0, 5000.0]
    assert log_ticks(-2.5, 1.2) == [-2.0, -1.0, 0.0, 1.0]
    assert [round(10**t, 6) for t in log_ticks(0.1, 0.6)] == [2.0, 3.0]


def _colour_at(canvas: object, x: int, y: int) -> tuple[int, int, int]:
    at = (y * canvas.width + x) * 3  # type: ignore[attr-defined]
    return tuple(canvas.pixels[at : at + 3])  # type: ignore[attr-defined]


def test_picture_keeps_case_and_draws_curves_apart_without_colour() -> None:
    upper = picture([Series("AB", [(0.0, 1.0), (1.0, 2.0)])], "T", False, 300, 200)
    lower = picture([Series("ab", [(0.0, 1.0), (1.0, 2.0)])], "T", False, 300, 200)
    assert upper.pixels != lower.pixels  # the label's case shows
    two = [
        Series(n, [(float(x), float(x % 7 + k)) for x in range(100)])
        for k, n in ((0, "a"), (9, "b"))
    ]
    canvas = picture(two, "loss", False, 600, 300)
    counts = [
        sum(
            _colour_at(canvas, x, y) == RGB[i]
            for x in range(canvas.width)
            for y in range(canvas.height)
        )
        for i in range(2)
    ]
    # the same curve solid and dashed: the dashed one has fewer pixels of its colour
    assert counts[1] < counts[0] * 0.9 and DASHES[0] != DASHES[1]


def test_top_shows_the_whole_run_when_a_loop_is_one_epoch_of_several() -> None:
    p = whole_run(Progress("epoch 2/5", 30, 100, 10.0, 7.0))
    assert (p.run_done, p.run_total, p.run_eta_s) == (130, 500, 37.0)
    same = Progress("train", 30, 100, 10.0, 7.0)
    assert whole_run(same) == same
    assert whole_run(Progress("epoch 9/5", 30, 100, 10.0, 7.0)).run_total is None
