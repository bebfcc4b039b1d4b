"""What ``top`` sees: each job's processes, CPU, memory, GPUs, progress and last line, in one
snapshot per refresh (one pass over /proc, the latest GPU look); never writes the registry.
``plot``'s curves are in :mod:`handyjobs.views.jobcurves`, ``show``'s summary of metrics in
:mod:`handyjobs.views.summary`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from handyjobs.core import jobs, logs
from handyjobs.core.records import JobRecord, JobState, parse_time
from handyjobs.errors import HandyjobsError
from handyjobs.gpus import discovery as gpus
from handyjobs.jobside import rotation, sampler, terminal
from handyjobs.jobside.sampler import ProcTable
from handyjobs.structs import field, frozen, replace
from handyjobs.views import curves

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from handyjobs.gpus.discovery import Discovery


# ---- the live view -----------------------------------------------------------------------


@frozen
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


@frozen
class LiveJob:
    """One row of the live view."""

    record: JobRecord
    pids: tuple[int, ...] = ()
    cpu_pct: float | None = None
    rss_bytes: int | None = None
    gpus: dict[int, tuple[int, int | None]] = field(default_factory=dict)
    progress: Progress | None = None
    last_line: str = ""


@frozen
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
    ranks_stopped = record.state is JobState.STOPPED and record.spec.world_size > 1
    with contextlib.suppress(OSError):
        files = [rotation.previous(record.log_path), record.log_path]
        data, _ = logs.tail_files(files, 80 if ranks_stopped else 8)
        raw = [line for line in data.split(b"\n") if not line.startswith(terminal.HANDYJOBS_PREFIX)]
        if ranks_stopped:
            raw = [line for line in raw if terminal.split_tag(line)[0] is not None] or raw
        lines = [terminal.retag(line, terminal.TagMode.PANE) for line in raw]
        return terminal.last_line(b"\n".join(lines)).decode(errors="replace")
    return ""
