"""The core of looking at jobs: metrics and curves, a job's details, the live view's snapshot.

The CLI calls one function here per command (``plot``, ``show``, ``list --metric``, ``top``);
each reads records through :mod:`handyjobs.core.jobs` and files beside the job's log, and never
writes the registry. Errors are :class:`~handyjobs.errors.HandyjobsError` with what to do.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from handyjobs.core import jobs, logs, paths
from handyjobs.core.records import JobRecord, JobState, parse_time
from handyjobs.errors import HandyjobsError, JobStateError, UsageError, storage_error
from handyjobs.gpus import discovery as gpus
from handyjobs.jobside import rotation, sampler, terminal
from handyjobs.jobside.sampler import ProcTable
from handyjobs.views import curves, png, render
from handyjobs.views.plot import Series, picture

if TYPE_CHECKING:
    from handyjobs.gpus.discovery import Discovery
    from handyjobs.views.plot import Series


# ---- metrics ---------------------------------------------------------------------------------


#: What ``plot --x`` may put along the x axis.
X_AXES = ("step", "time", "epoch")


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class JobView:
    """``show``: the record and the last and best value of each metric the job logged."""

    record: JobRecord
    metrics: list[curves.Summary]


def job_view(name: str) -> JobView:
    """One job's record with a summary of its metrics."""
    record = jobs.with_final_view(jobs.get_job(name))
    return JobView(record, curves.summarise(curves.read(curves.metrics_path(record.log_path))))


@dataclass(frozen=True)
class Listing:
    """``list``: the records, how many there are, and a metric's last value per job."""

    records: list[JobRecord]
    total: int
    metric: str | None = None
    values: dict[str, float | None] = field(default_factory=dict)


def list_with_metric(
    metric: str | None, all_jobs: bool = False, states: Sequence[JobState] = ()
) -> Listing:
    """``list`` with a column for ``metric``: its last value, read from the end of each file."""
    records, total = jobs.list_jobs(all_jobs=all_jobs, states=states)
    values: dict[str, float | None] = {}
    if metric:
        for record in records:
            values[record.name] = curves.last_value(curves.metrics_path(record.log_path), metric)
    return Listing(records, total, metric, values)


# ---- the live view -----------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """What the job's trainer last said about its loop (``$HANDYJOBS_PROGRESS_FILE``), and the
    whole run's share and ETA when the loop is one pass of several (``epoch 3/10``)."""

    desc: str
    done: int
    total: int | None
    rate: float | None
    eta_s: float | None
    run_done: int | None = None
    run_total: int | None = None
    run_eta_s: float | None = None


# "epoch 3/10", "Epoch 3 / 10": the pass under way and how many there are.
_PASS = re.compile(r"(\d+)\s*/\s*(\d+)")


def whole_run(p: Progress) -> Progress:
    """``p`` with the whole run's progress when its description counts passes (``epoch 3/10``
    of 500 steps each: 1000 + done of 5000 steps, ETA from the loop's rate)."""
    found = _PASS.search(p.desc)
    if found is None or not p.total:
        return p
    current, passes = int(found.group(1)), int(found.group(2))
    if not 1 <= current <= passes:
        return p
    done = (current - 1) * p.total + min(p.done, p.total)
    total = passes * p.total
    eta = (total - done) / p.rate if p.rate else None
    return replace(p, run_done=done, run_total=total, run_eta_s=eta)


def read_progress(path: Path, since: str | None = None) -> Progress | None:
    """The progress file, if the run wrote one (a file older than the run is not its own)."""
    try:
        if since and os.stat(path).st_mtime < parse_time(since).timestamp() - 1:
            return None
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None

    def num(key: str) -> float | None:
        value = doc.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return None

    # The document trainer.progress writes (handyjobs/progress.py).
    done = num("done")
    if done is None:
        return None
    total = num("total")
    rate, eta = num("rate_per_s"), num("eta_s")
    desc = doc.get("desc", "")
    total_n = None if total is None else int(total)
    return whole_run(Progress(str(desc or ""), int(done), total_n, rate, eta))


@dataclass(frozen=True)
class LiveJob:
    """One row of the live view."""

    record: JobRecord
    pids: tuple[int, ...] = ()
    cpu_pct: float | None = None
    rss_bytes: int | None = None
    gpus: dict[int, tuple[int, int | None]] = field(default_factory=dict)
    progress: Progress | None = None
    last_line: str = ""


@dataclass(frozen=True)
class Snapshot:
    """Everything the live view shows at one moment."""

    jobs: list[LiveJob]
    discovery: Discovery | None
    gpu_note: str | None
    taken: float


class _GpuPoller:
    """GPU discovery in a thread of its own: a driver that hangs never freezes the view."""

    def __init__(self, env: Mapping[str, str] | None, interval_s: float) -> None:
        self.env, self.interval_s = env, interval_s
        self.latest: Discovery | None = None
        self.at = 0.0
        self.error: str | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="handyjobs-gpus", daemon=True)
        self.thread.start()

    def _loop(self) -> None:

        try:
            with gpus.watch(self.env) as looking:
                while not self.stop.is_set():
                    found = looking.discover()
                    self.latest, self.at, self.error = found, time.monotonic(), None
                    if found.source == "none":
                        return  # no GPU on this machine: nothing to look at again
                    self.stop.wait(self.interval_s)
        except HandyjobsError as exc:
            self.error = str(exc)


class Watcher:
    """Takes snapshots for ``top``: one look at /proc, one GPU discovery, no registry writes."""

    def __init__(self, env: Mapping[str, str] | None = None, interval_s: float = 1.0) -> None:
        """Start the GPU looks; the first snapshot has CPU use from the second one on."""

        self.table = ProcTable()
        self.gpus = _GpuPoller(env, interval_s)
        self.prev_cpu: dict[int, float] = {}
        self.prev_at: float | None = None

    def close(self) -> None:
        """Stop looking at the GPUs."""
        self.gpus.stop.set()

    def snapshot(self) -> Snapshot:
        """The jobs now, with what their processes use."""

        records = jobs.peek_jobs()
        by_run = self.table.scan()
        now = time.monotonic()
        wall = None if self.prev_at is None else now - self.prev_at
        discovery = self.gpus.latest
        cpu_now: dict[int, float] = {}
        rows = []
        for record in records:
            run = record.current
            if not run.state.active:
                rows.append(LiveJob(record, last_line=_last_line(record)))
                continue
            pids = tuple(sorted(by_run.get(run.run_id, ())))
            looks = [u for u in (sampler.usage(p) for p in pids) if u is not None]
            cpu = {u.pid: u.cpu_s for u in looks}
            cpu_now.update(cpu)
            share = sampler.gpu_share(discovery, pids) if discovery is not None else {}
            rows.append(
                LiveJob(
                    record,
                    pids,
                    None if wall is None else sampler.cpu_percent(self.prev_cpu, cpu, wall),
                    sum(u.rss_bytes for u in looks) if looks else None,
                    share,
                    read_progress(curves.progress_path(record.log_path), run.started_at),
                    _last_line(record),
                )
            )
        self.prev_cpu, self.prev_at = cpu_now, now
        return Snapshot(rows, discovery, self.gpus.error, now)


def _last_line(record: JobRecord) -> str:
    """The last line the job printed (not handyjobs' notes), as its pane showed it; for a job
    of several ranks that was stopped, the last line of a rank (torchrun's own report of the
    signal comes after, untagged, and says nothing of the job)."""
    ranks_stopped = record.state is JobState.STOPPED and record.spec.procs > 1
    with contextlib.suppress(OSError):
        files = [rotation.previous(record.log_path), record.log_path]
        data, _ = logs.tail_files(files, 80 if ranks_stopped else 8)
        raw = [line for line in data.split(b"\n") if not line.startswith(terminal.HANDYJOBS_PREFIX)]
        if ranks_stopped:
            raw = [line for line in raw if terminal.split_tag(line)[0] is not None] or raw
        lines = [terminal.retag(line, terminal.TagMode.PANE) for line in raw]
        return terminal.last_line(b"\n".join(lines)).decode(errors="replace")
    return ""


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
