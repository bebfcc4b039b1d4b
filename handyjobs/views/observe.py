"""The core of looking at jobs: metrics and curves, a job's details, the live view's snapshot.

The CLI calls one function here per command (``plot``, ``show``, ``list --metric``, ``top``);
each reads records through :mod:`handyjobs.core.jobs` and files beside the job's log, and never
writes the registry. Errors are :class:`~handyjobs.errors.HandyjobsError` with what to do.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Curves:
    """What ``plot`` draws: one series per job, and the jobs that had no point of the metric."""

    metric: str
    series: list[Series]
    missing: list[str]


def job_curves(names: Sequence[str], metric: str, smooth: int = 1) -> Curves:
    """The metric's curve of each job (smoothed over ``smooth`` points)."""

    if smooth < 1:
        raise UsageError(f"--smooth {smooth}: give a number of points, 1 or more")
    series: list[Series] = []
    missing: list[str] = []
    seen: set[str] = set()
    for name in dict.fromkeys(names):
        record = jobs.get_job(name)
        found = curves.read(curves.metrics_path(record.log_path))
        seen.update(found)
        points = found.get(metric)
        if not points:
            missing.append(name)
            continue
        series.append(Series(name, curves.smooth(points, smooth)))
    if not series:
        raise JobStateError(render.no_metric(metric, missing, sorted(seen)))
    return Curves(metric, series, missing)


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
    """What the job's trainer last said about its loop (``$HANDYJOBS_PROGRESS_FILE``)."""

    desc: str
    done: int
    total: int | None
    rate: float | None
    eta_s: float | None


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
    return Progress(str(desc or ""), int(done), None if total is None else int(total), rate, eta)


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
    """The last line the job printed (not handyjobs' notes), as its pane showed it."""

    with contextlib.suppress(OSError):
        data, _ = logs.tail_files([rotation.previous(record.log_path), record.log_path], 8)
        lines = [
            terminal.retag(line, terminal.TagMode.PANE)
            for line in data.split(b"\n")
            if not line.startswith(terminal.HANDYJOBS_PREFIX)  # state and times say that
        ]
        return terminal.last_line(b"\n".join(lines)).decode(errors="replace")
    return ""


def write_picture(curves_: Curves, path: Path, log_y: bool) -> tuple[int, int]:
    """Draw the curves as a PNG file (written atomically); return its size."""

    title = curves_.metric + (" (log scale)" if log_y else "")
    canvas = picture(curves_.series, title, log_y)
    data = png.encode(canvas.width, canvas.height, bytes(canvas.pixels))
    try:
        paths.write_atomic(path, data, mode=0o644)
    except OSError as exc:
        raise storage_error(exc, "write the picture") from exc
    return canvas.width, canvas.height
