"""``handyjobs plot``: a metric's curves of one or more jobs, in the terminal or a PNG."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from handyjobs.errors import UsageError
from handyjobs.views import observe


def plot(
    names: Annotated[list[str], typer.Argument(help="Jobs to draw (overlaid).")],
    metric: Annotated[str, typer.Option(help="The metric to draw.")] = "loss",
    smooth: Annotated[int, typer.Option(help="Moving average over N points.")] = 1,
    log_y: Annotated[bool, typer.Option("--log-y", help="Logarithmic y axis.")] = False,
    png: Annotated[Path | None, typer.Option(help="Write a PNG picture here instead.")] = None,
    height: Annotated[int, typer.Option(help="Rows of the chart.")] = 16,
    width: Annotated[int | None, typer.Option(help="Columns (default: the terminal's).")] = None,
) -> None:
    """Draw a metric's curves of jobs (a sweep overlaid); --png writes a picture."""
    from handyjobs.views import charts as views

    if height < 3 or (width is not None and width < 20):
        raise UsageError("--height 3 or more and --width 20 or more, please")
    curves = observe.job_curves(names, metric, smooth)
    if png is not None:
        size = observe.write_picture(curves, png, log_y)
        print(f"wrote {png} ({size[0]}x{size[1]}, {len(curves.series)} curves)")
        return
    cols = width or min(shutil.get_terminal_size((100, 24)).columns, 160)
    views.console(cols).print(views.chart(curves, cols, height, log_y, smooth))
