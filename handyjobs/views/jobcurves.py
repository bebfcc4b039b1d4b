"""What ``plot`` draws: each job's curves of a metric, smoothed, on a common x axis, and the
picture written to a file. Reads records through :mod:`handyjobs.core.jobs` and the metrics
files beside the jobs' logs; never writes the registry.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from handyjobs.core import jobs, paths
from handyjobs.core.records import JobRecord
from handyjobs.errors import JobStateError, UsageError, storage_error
from handyjobs.structs import frozen
from handyjobs.views import curves, png, render
from handyjobs.views.plot import Series, picture

#: What ``plot --x`` may put along the x axis.
X_AXES = ("step", "time", "epoch")


@frozen
class Curves:
    """What ``plot`` draws: one series per job and metric, the jobs that had no point of a
    metric, and what the x axis counts (``step``, ``epoch``, ``seconds``, ...)."""

    metric: str
    series: list[Series]
    missing: list[str]
    x: str = "step"


def job_curves(
    names: Sequence[str],
    metric: str,
    smooth: int = 1,
    group: str | None = None,
    x: str = "step",
    last: int | None = None,
) -> Curves:
    """The curves of ``metric`` (``loss,val_loss``: several) of each job named or of ``group``
    (labelled by their params), smoothed over ``smooth`` points, the ``last`` steps only."""

    metrics = list(dict.fromkeys(m.strip() for m in metric.split(",") if m.strip()))
    if smooth < 1:
        raise UsageError(f"--smooth {smooth}: give a number of points, 1 or more")
    if x not in X_AXES:
        raise UsageError(f"--x {x}: use one of {', '.join(X_AXES)}")
    if last is not None and last < 1:
        raise UsageError(f"--last {last}: give a number of steps, 1 or more")
    if not metrics:
        raise UsageError("--metric: name a metric (several: loss,val_loss)")
    records = pick_jobs(names, group)
    series: list[Series] = []
    missing: list[str] = []
    seen: set[str] = set()
    for record in records:
        found = curves.read_samples(curves.metrics_path(record.log_path), times=x == "time")
        seen.update(found)
        label = _label(record, group is not None)
        drawn = _job_series(found, metrics, smooth, x, last)
        for m in metrics:
            if m not in drawn:
                missing.append(record.name if len(metrics) == 1 else f"{record.name} ({m})")
                continue
            both = f"{label} {m}" if len(records) > 1 else m
            series.append(Series(label if len(metrics) == 1 else both, drawn[m], m))
    if not series:
        if x == "epoch" and seen and "epoch" not in seen:
            raise JobStateError(render_epoch_missing())
        raise JobStateError(render.no_metric(", ".join(metrics), missing, sorted(seen)))
    unit = "step"
    if x == "time":
        unit, series = _in_time_units(series)
    return Curves(", ".join(metrics), series, missing, unit if x != "epoch" else "epoch")


def render_epoch_missing() -> str:
    """The error of ``--x epoch`` for jobs that never logged an epoch."""
    return (
        "--x epoch needs an 'epoch' value in the metrics: log it with the others "
        "(log_metrics({'loss': loss, 'epoch': epoch}, step=step)), or use --x step or time"
    )


def pick_jobs(names: Sequence[str], group: str | None) -> list[JobRecord]:
    """The records of the jobs named, then those of ``group`` (oldest first), once each."""
    every = list(names)
    if group is not None:
        of_group = jobs.names(group)
        if not of_group:
            raise UsageError(f"no job of group {group}; see `handyjobs list --all`")
        every += of_group
    if not every:
        raise UsageError("give the jobs: NAME... or --group GROUP")
    return [jobs.get_job(name) for name in dict.fromkeys(every)]


def _label(record: JobRecord, by_params: bool) -> str:
    """A curve's name: the job's, or its params (``lr=1e-3 bs=64``) for a sweep's curves."""
    if by_params and record.spec.params:
        return " ".join(f"{k}={v}" for k, v in record.spec.params)
    return record.name


def _job_series(
    found: Mapping[str, list[curves.Sample]],
    metrics: Sequence[str],
    smooth: int,
    x: str,
    last: int | None,
) -> dict[str, list[curves.Point]]:
    """One job's points of each metric, on the x axis asked for (time: seconds from its first
    line; epoch: the epoch logged at that step, read between the epochs' steps)."""
    kept = {m: curves.latest(found[m]) for m in metrics if found.get(m)}
    if not kept:
        return {}
    cut = max(s.step for samples in kept.values() for s in samples) - last if last else None
    times = [s.time for samples in found.values() for s in samples if s.time is not None]
    start = min(times) if times else 0.0
    epochs = [(s.step, s.value) for s in curves.latest(found.get("epoch", []))]
    out: dict[str, list[curves.Point]] = {}
    for m, samples in kept.items():
        ys = curves.smooth([(s.step, s.value) for s in samples], smooth)
        points = []
        for s, (_, y) in zip(samples, ys, strict=True):
            if cut is not None and s.step <= cut:
                continue
            at = s.step if x == "step" else None
            if x == "time" and s.time is not None:
                at = s.time - start
            elif x == "epoch":
                at = _between(epochs, s.step)
            if at is not None:
                points.append((at, y))
        if points:
            out[m] = sorted(points, key=lambda p: p[0])
    return out


def _between(known: Sequence[curves.Point], step: float) -> float | None:
    """The value at ``step`` of a curve known at some steps (the epoch): on the straight line
    through the two known points around it, or the nearest two at either end."""
    finite = [p for p in known if math.isfinite(p[1])]
    if len(finite) < 2:
        return finite[0][1] if finite else None
    pairs = list(itertools.pairwise(finite))
    (s0, v0), (s1, v1) = next(
        ((a, b) for a, b in pairs if step <= b[0]), pairs[-1]
    )  # the first pair that reaches step, else the last one (beyond the end)
    return v0 if s1 == s0 else v0 + (v1 - v0) * (step - s0) / (s1 - s0)


def _in_time_units(series: list[Series]) -> tuple[str, list[Series]]:
    """Seconds as seconds, minutes or hours, whichever reads best for the longest curve."""
    longest = max((x for s in series for x, _ in s.points), default=0.0)
    unit, size = next(
        (u, n)
        for u, n in (("hours", 3600.0), ("minutes", 60.0), ("seconds", 1.0))
        if longest >= 2 * n or n == 1.0
    )
    scaled = [Series(s.label, [(x / size, y) for x, y in s.points], s.metric) for s in series]
    return unit, scaled


def write_picture(curves_: Curves, path: Path, log_y: bool) -> tuple[int, int]:
    """Draw the curves as a PNG file (written atomically); return its size."""

    title = curves_.metric + (" (log scale)" if log_y else "")
    canvas = picture(curves_.series, title, log_y, x_label=curves_.x)
    data = png.encode(canvas.width, canvas.height, bytes(canvas.pixels))
    try:
        paths.write_atomic(path, data, mode=0o644)
    except OSError as exc:
        raise storage_error(exc, "write the picture") from exc
    return canvas.width, canvas.height
