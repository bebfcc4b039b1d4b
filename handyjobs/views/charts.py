"""Rich renderings for looking at jobs: the ``plot`` chart and the ``top`` screen.

Like :mod:`handyjobs.views.render`, this is where words are made; it imports rich, so only the
commands that draw (``plot``, ``top``) import it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from handyjobs.core.records import JobState
from handyjobs.gpus.model import Discovery
from handyjobs.views import render
from handyjobs.views.curves import higher_is_better
from handyjobs.views.jobcurves import Curves
from handyjobs.views.observe import LiveJob, Progress, Snapshot
from handyjobs.views.plot import COLOURS, MARKS, Series, chart_lines

# The colour of each state, as `list` draws it (rich style names).
_STATE = render.STATE_STYLE


def console(width: int | None = None) -> Console:
    """A console that follows ``NO_COLOR`` and the terminal (no colour when piped)."""
    return Console(highlight=False, soft_wrap=False, width=width)


# ---- plot ------------------------------------------------------------------------------------


def chart(curves: Curves, width: int, height: int, log_y: bool, smooth: int) -> RenderableType:
    """The curves overlaid, with a title and a legend (marker, last and best of each, and
    where a curve stopped being finite)."""

    how = []
    if smooth > 1:
        how.append(f"moving average of {smooth} points")
    if log_y:
        how.append("log scale")
    if curves.x != "step":
        how.append(f"by {curves.x}")
    title = Text(render.printable(curves.metric), style="bold")
    if how:
        title.append(f"  ({', '.join(how)})", style="dim")
    body = Text(no_wrap=True, overflow="crop")
    for pieces in chart_lines(curves.series, width, height, log_y):
        for text, colour in pieces:
            body.append(text, style=COLOURS[colour % len(COLOURS)] if colour is not None else "dim")
        body.append("\n")
    legend = Text()
    for index, series in enumerate(curves.series):
        style = COLOURS[index % len(COLOURS)]
        legend.append(f"━{MARKS[index % len(MARKS)]}━ ", style=style)
        legend.append(render.printable(series.label), style=style)
        legend.append(f"  {legend_text(series, curves.x)}\n")
    parts: list[RenderableType] = [title, body, legend]
    if curves.missing:
        parts.append(
            Text(
                f"no point of {curves.metric} yet: {', '.join(curves.missing)}",
                style="dim",
            )
        )
    return Group(*parts)


def legend_text(series: Series, x: str) -> str:
    """``last 0.31 (step 40)  best 0.29 (step 36)``, and ``diverged at step 52`` for a curve
    whose values stopped being finite (NaN or inf, drawn as crosses)."""

    def at(value: float) -> str:  # "step 40", "epoch 2.5", "3.2 minutes"
        return f"{value:g} {x}" if x in ("hours", "minutes", "seconds") else f"{x} {value:g}"

    finite = [p for p in series.points if math.isfinite(p[1])]
    last_x, last_y = series.points[-1]
    text = f"last {render.metric_value(last_y)} ({at(last_x)})"
    if finite:
        pick = max if higher_is_better(series.metric or series.label) else min
        best_x, best_y = pick(finite, key=lambda p: p[1])
        text += f"  best {render.metric_value(best_y)} ({at(best_x)})"
    bad = next((p for p in series.points if not math.isfinite(p[1])), None)
    if bad is not None:
        text += f"  diverged at {at(bad[0])} ({render.metric_value(bad[1])})"
    return text


# ---- top -------------------------------------------------------------------------------------


def _progress(p: Progress | None) -> str:
    """The loop's count, and the whole run's share when the loop is one pass of several."""
    if p is None:
        return ""
    head = f"{p.desc} " if p.desc else ""
    if p.total:
        text = f"{head}{p.done}/{p.total} {100 * p.done // max(p.total, 1)}%"
        if p.run_done is not None and p.run_total:
            text += f", run {100 * p.run_done // p.run_total}%"
        return text
    return f"{head}{p.done}"


def _eta(p: Progress | None) -> str:
    """The whole run's ETA when known (epochs x steps), else the loop's."""
    if p is None:
        return ""
    eta = p.run_eta_s if p.run_eta_s is not None else p.eta_s
    return "" if eta is None else render.duration(eta)


def _gpus(job: LiveJob) -> str:
    if job.gpus:
        return " ".join(
            f"{i}:{mem}M" + ("" if util is None else f"/{util}%")
            for i, (mem, util) in sorted(job.gpus.items())
        )
    return render.gpu_text(job.record)


def top_screen(
    snap: Snapshot, selected: int, message: str = "", fit: bool = True
) -> RenderableType:
    """The whole ``top`` screen: jobs, GPUs, keys and the last message. ``fit``: as wide as
    the terminal (the last line cut to it); else every column whole, for a file or a pipe."""
    head = Text("handyjobs top", style="bold")
    head.append(f"  {_counts(snap)}  {time.strftime('%H:%M:%S')}", style="dim")
    table = Table(box=None, pad_edge=False, expand=fit, header_style="bold")
    for column, kw in (
        ("NAME", {"no_wrap": True}),
        ("STATE", {"no_wrap": True}),
        ("DURATION", {"justify": "right", "no_wrap": True}),
        ("CPU%", {"justify": "right", "no_wrap": True}),
        ("RSS", {"justify": "right", "no_wrap": True}),
        ("GPUS", {"no_wrap": True}),
        ("PROGRESS", {"no_wrap": True}),
        ("ETA", {"justify": "right", "no_wrap": True}),
        ("LAST LINE", {"no_wrap": True, "overflow": "ellipsis", "ratio": 1 if fit else None}),
    ):
        table.add_column(column, **kw)
    for index, job in enumerate(snap.jobs):
        record = job.record
        cells = [
            render.printable(record.name),
            render.list_state(record),
            render.duration(record.duration_s()),
            "" if job.cpu_pct is None else f"{job.cpu_pct:.0f}",
            "" if job.rss_bytes is None else render.size(job.rss_bytes),
            _gpus(job),
            render.printable(_progress(job.progress)),
            _eta(job.progress),
            render.printable(job.last_line),
        ]
        # Text, never markup: a job's line such as "[handyjobs] ..." must show as it is.
        row = [Text(c, style=_STATE[record.state] if i == 1 else "") for i, c in enumerate(cells)]
        table.add_row(*row, style="reverse" if index == selected else None)
    parts: list[RenderableType] = [head, table]
    if snap.discovery is not None and snap.discovery.gpus:
        parts += [Text(""), _gpu_table(snap.discovery)]
    elif snap.gpu_note:
        parts.append(Text(snap.gpu_note, style="dim"))
    if not snap.jobs:
        parts.append(Text("no jobs yet; start one with `handyjobs start SCRIPT`", style="dim"))
    keys = Text("q quit  ↑/↓ select  f follow its log  s stop it", style="dim")
    parts += [Text(""), Text(message) if message else keys]
    return Group(*parts)


def _counts(snap: Snapshot) -> str:
    """``2 running, 1 queued``: held and paused jobs are counted apart, when there are any."""
    states = [j.record.state for j in snap.jobs]
    held = sum(1 for j in snap.jobs if j.record.state is JobState.QUEUED and j.record.current.held)
    counts = [
        (states.count(JobState.RUNNING), "running"),
        (states.count(JobState.QUEUED) - held, "queued"),
        (held, "held"),
        (states.count(JobState.PAUSED), "paused"),
    ]
    return ", ".join(f"{n} {what}" for i, (n, what) in enumerate(counts) if n or i < 2)


def _gpu_table(discovery: Discovery) -> Table:
    """The GPUs under ``top``'s jobs: index, name, memory, use."""
    gpus = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("GPU", "NAME", "MEMORY", "UTIL"):
        gpus.add_column(column, no_wrap=True)
    for g in discovery.gpus:
        memory = f"{g.memory_used_mib}/{g.memory_total_mib} MiB"
        util = "" if g.utilization_pct is None else f"{g.utilization_pct}%"
        gpus.add_row(*(Text(c) for c in (str(g.index), g.name, memory, util)))
    return gpus


def stop_message(name: str, pids: Sequence[int], error: str | None) -> str:
    """What happened to a stop asked from ``top``."""
    if error:
        return f"could not stop {name}: {error}"
    n = len(pids)
    return f"stopped {name} ({n} process{'' if n == 1 else 'es'} ended)"


def followed_message(name: str) -> str:
    """What ``top`` says under a log it followed to the end."""
    return f"\n(end of {name}'s log: press a key to go back to top)"
