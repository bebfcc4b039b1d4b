"""A job's metrics as curves: read the metrics file, smooth, summarise (no torch, no rich).

The job appends JSON lines to ``$HANDYJOBS_METRICS_FILE`` (``jobs/NAME/metrics.jsonl``).
This reader takes the layouts a line may have::

    {"step": 10, "run": 1, "values": {"loss": 0.52}, "time": "..."}  # handyjobs.log_metrics
    {"step": 10, "loss": 0.52, "val_acc": 0.91, "time": 1732.5}   # several metrics a line
    {"step": 10, "metrics": {"loss": 0.52}}                      # nested
    {"step": 10, "name": "loss", "value": 0.52}                  # one metric a line

The x of a point is its ``step`` when it has one, else its place among the metric's points.
Lines of a rank other than 0 (``"rank": N``) are left out. When the job ran again (``"run"``)
and a later run logs steps an earlier one already had (no resume), the later run's points
replace the earlier ones from there: the curve shows what happened last.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from handyjobs.core.logs import lines_backwards
from handyjobs.metrics import higher_is_better as rule

#: Keys of a metrics line that are not metrics.
RESERVED = frozenset(
    {"step", "time", "timestamp", "ts", "wall_time", "run", "run_id", "rank", "name", "value"}
)

Point = tuple[float, float]


def metrics_path(log_path: str) -> Path:
    """The metrics file of a job, beside its log."""
    return Path(log_path).parent / "metrics.jsonl"


def progress_path(log_path: str) -> Path:
    """The progress file of a job (``$HANDYJOBS_PROGRESS_FILE``), beside its log."""
    return Path(log_path).parent / "progress.json"


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _entries(doc: Mapping[str, object]) -> Iterable[tuple[str, float]]:
    """The (metric, value) pairs of one line, in any of the accepted layouts."""
    name, value = doc.get("name"), _number(doc.get("value"))
    if isinstance(name, str) and value is not None:
        yield name, value
    for holder in ("values", "metrics"):
        nested = doc.get(holder)
        if isinstance(nested, dict):
            for key, item in nested.items():
                number = _number(item)
                if number is not None:
                    yield str(key), number
    for key, item in doc.items():
        if key in RESERVED or key in ("values", "metrics") or key.startswith("_"):
            continue
        number = _number(item)
        if number is not None:
            yield key, number


def parse(lines: Iterable[bytes]) -> dict[str, list[Point]]:
    """Metric -> points, from the lines of a metrics file (bad lines are skipped)."""
    raw: dict[str, list[tuple[int, float, float]]] = {}  # metric -> (run, x, y)
    for line in lines:
        try:
            doc = json.loads(line)
        except ValueError:
            continue  # a line being written, or not ours
        if not isinstance(doc, dict):
            continue
        rank = doc.get("rank")
        if isinstance(rank, int) and rank != 0:
            continue
        run = doc.get("run")
        run_no = run if isinstance(run, int) else 0
        step = _number(doc.get("step"))
        for key, value in _entries(doc):
            points = raw.setdefault(key, [])
            x = step if step is not None else float(len(points))
            points.append((run_no, x, value))
    return {key: _latest(points) for key, points in raw.items()}


def _latest(points: list[tuple[int, float, float]]) -> list[Point]:
    """Points in step order; where a later run logged steps again, its points win from there."""
    out: list[tuple[int, float, float]] = []
    for run, x, y in points:
        if out and run > out[-1][0]:
            out = [p for p in out if p[1] < x]  # the new run restarted at x: drop what it redoes
        out.append((run, x, y))
    out.sort(key=lambda p: p[1])
    return [(x, y) for _, x, y in out]


def read(path: str | os.PathLike[str]) -> dict[str, list[Point]]:
    """Every metric of a metrics file (empty when there is none)."""
    try:
        with open(path, "rb") as f:
            return parse(f)
    except FileNotFoundError:
        return {}


def last_value(path: str | os.PathLike[str], metric: str, block: int = 64 * 1024) -> float | None:
    """The last value of one metric, read from the end of the file (cheap for ``list``)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None

    try:
        for line in lines_backwards(fd, block):
            found = parse([line]).get(metric)
            if found:
                return found[-1][1]
        return None
    finally:
        os.close(fd)


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is the better one (accuracy) or not (loss): the
    rule of :func:`handyjobs.metrics.higher_is_better`, so ``show`` and scripts agree."""

    return rule(metric)


@dataclass(frozen=True)
class Summary:
    """The last and the best value of one metric."""

    metric: str
    last: float
    last_step: float
    best: float
    best_step: float
    higher_is_better: bool
    points: int

    def to_dict(self) -> dict[str, object]:
        """JSON form."""
        return {
            "last": self.last,
            "last_step": self.last_step,
            "best": self.best,
            "best_step": self.best_step,
            "best_is": "max" if self.higher_is_better else "min",
            "points": self.points,
        }


def summarise(series: Mapping[str, Sequence[Point]]) -> list[Summary]:
    """The last and best value of every metric, by name."""
    out = []
    for metric in sorted(series):
        points = series[metric]
        if not points:
            continue
        higher = higher_is_better(metric)
        pick = max if higher else min
        best = pick(points, key=lambda p: p[1])
        out.append(
            Summary(metric, points[-1][1], points[-1][0], best[1], best[0], higher, len(points))
        )
    return out


def smooth(points: Sequence[Point], window: int) -> list[Point]:
    """A trailing moving average over ``window`` points (1 or less: unchanged)."""
    if window <= 1:
        return list(points)
    out = []
    total = 0.0
    for i, (x, y) in enumerate(points):
        total += y
        if i >= window:
            total -= points[i - window][1]
        out.append((x, total / min(i + 1, window)))
    return out
