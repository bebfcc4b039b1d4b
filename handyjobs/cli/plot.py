"""``handyjobs plot``: metrics' curves of jobs (a sweep overlaid), in the terminal or a PNG."""

from __future__ import annotations

import shutil
from pathlib import Path

from handyjobs.cli.parse import Arg, Command, Parsed
from handyjobs.core.options import option
from handyjobs.errors import UsageError


def _run(p: Parsed) -> None:
    # lazy: only this command pays for it, not `--help` or the other commands
    from handyjobs.views import charts as views  # lazy: rich's charts cost start-up
    from handyjobs.views import jobcurves

    height, width, smooth = p.number("height"), p.number("width"), p.number("smooth")
    metric = p.text("metric")
    assert height is not None and smooth is not None and metric is not None
    if height < 3 or (width is not None and width < 20):
        raise UsageError("--height 3 or more and --width 20 or more, please")
    curves = jobcurves.job_curves(
        p.items("names"), metric, smooth, p.text("group"), p.text("x") or "step", p.number("last")
    )
    png = p.text("png")
    if png is not None:
        size = jobcurves.write_picture(curves, Path(png), p.flag("log_y"))
        print(f"wrote {png} ({size[0]}x{size[1]}, {len(curves.series)} curves)")
        return
    cols = width or min(shutil.get_terminal_size((100, 24)).columns, 160)
    views.console(cols).print(views.chart(curves, cols, height, p.flag("log_y"), smooth))


COMMAND = Command(
    "plot",
    "Draw metrics' curves of jobs (a sweep overlaid); --png writes a picture.",
    _run,
    args=(Arg("names", "Jobs to draw (overlaid).", many=True, complete="jobs"),),
    options=(
        option(
            "--metric",
            "str",
            "NAME",
            "The metric to draw (several: loss,val_loss).",
            default="loss",
        ),
        option("--group", "str", "GROUP", "Every job of this group (a sweep), labelled by params."),
        option(
            "--x", "str", "AXIS", "What the x axis counts: step, time or epoch.", default="step"
        ),
        option("--last", "int", "N", "Only the last N steps."),
        option("--smooth", "int", "N", "Moving average over N points.", default=1),
        option("--log-y", "flag", "", "Logarithmic y axis."),
        option("--png", "str", "FILE", "Write a PNG picture here instead."),
        option("--height", "int", "ROWS", "Rows of the chart.", default=16),
        option("--width", "int", "COLS", "Columns (default: the terminal's)."),
    ),
)
