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

A value that is not finite is kept as such (NaN, inf): a diverged run must look diverged.
``log_metrics`` writes it as null in ``values`` (strict JSON) and names it in ``nonfinite``;
a bare ``NaN`` or ``Infinity`` (Python's json writes them) reads the same.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from operator import itemgetter
from pathlib import Path

from handyjobs.core.logs import lines_backwards
from handyjobs.metrics import higher_is_better as rule
from handyjobs.structs import frozen

#: Keys of a metrics line that are not metrics.
RESERVED = frozenset(
    {
        "step",
        "time",
        "timestamp",
        "ts",
        "wall_time",
        "run",
        "run_id",
        "rank",
        "name",
        "value",
        "nonfinite",
    }
)
_TIME_KEYS = ("time", "timestamp", "ts", "wall_time")

Point = tuple[float, float]


class Sample(tuple[float, float, "float | None", "int | None"]):
    """One logged value: its step (x), value (maybe NaN or inf), time (epoch s) and run."""

    # A tuple as typing.NamedTuple makes one (sorted by step as a tuple), without typing's
    # import on the path of `show`.
    __slots__ = ()

    def __new__(cls, step: float, value: float, time: float | None, run: int | None) -> Sample:
        return tuple.__new__(cls, (step, value, time, run))

    @property
    def step(self) -> float:
        """The x of the point: the step logged, or the line's number."""
        return self[0]

    @property
    def value(self) -> float:
        """The value logged (maybe NaN or inf)."""
        return self[1]

    @property
    def time(self) -> float | None:
        """When it was logged (epoch s), if known."""
        return self[2]

    @property
    def run(self) -> int | None:
        """The run of the job that logged it, if known."""
        return self[3]


def metrics_path(log_path: str) -> Path:
    """The metrics file of a job, beside its log."""
    return Path(log_path).parent / "metrics.jsonl"


def progress_path(log_path: str) -> Path:
    """The progress file of a job (``$HANDYJOBS_PROGRESS_FILE``), beside its log."""
    return Path(log_path).parent / "progress.json"


def nonfinite(value: float) -> str | None:
    """``"nan"``, ``"inf"`` or ``"-inf"`` for a value that is not finite, else None."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return None


def json_number(value: float | None) -> dict[str, object]:
    """A value for ``--json``: ``{"value": 0.5}``, or null with a flag ``{"value": null,
    "nonfinite": "nan"}`` (NaN is not JSON)."""
    if value is None:
        return {"value": None}
    word = nonfinite(value)
    return {"value": None, "nonfinite": word} if word else {"value": value}


_WORDS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _number(value: object) -> float | None:
    """A number from JSON (NaN and inf kept), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _flagged(flags: object, key: str) -> float:
    """The value a null of ``values`` stands for: what ``nonfinite`` names, else NaN."""
    word = flags.get(key) if isinstance(flags, dict) else None
    return _WORDS.get(word, math.nan) if isinstance(word, str) else math.nan


def _entries(doc: Mapping[str, object]) -> Iterable[tuple[str, float]]:
    """The (metric, value) pairs of one line, in any of the accepted layouts."""
    name, value = doc.get("name"), _number(doc.get("value"))
    if isinstance(name, str) and value is not None:
        yield name, value
    for holder in ("values", "metrics"):
        nested = doc.get(holder)
        if isinstance(nested, dict):
            for key, item in nested.items():
                if item is None and holder == "values":
                    # log_metrics writes a non-finite value as null, named in "nonfinite".
                    yield str(key), _flagged(doc.get("nonfinite"), key)
                    continue
                number = _number(item)
                if number is not None:
                    yield str(key), number
    for key, item in doc.items():
        if key in RESERVED or key in ("values", "metrics") or key.startswith("_"):
            continue
        number = _number(item)
        if number is not None:
            yield key, number


def _time(doc: Mapping[str, object]) -> float | None:
    """When a line was written, in seconds since the epoch (ISO-8601 text or a number)."""
    for key in _TIME_KEYS:
        value = doc.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def parse_samples(lines: Iterable[bytes], times: bool = True) -> dict[str, list[Sample]]:
    """Metric -> every value rank 0 logged, in file order (bad lines are skipped); without
    ``times`` the samples carry no time (reading it costs a quarter more)."""
    out: dict[str, list[Sample]] = {}
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
        run_no = run if isinstance(run, int) and not isinstance(run, bool) else None
        step = _number(doc.get("step"))
        step = step if step is not None and math.isfinite(step) else None
        when = _time(doc) if times else None
        for key, value in _entries(doc):
            samples = out.setdefault(key, [])
            x = step if step is not None else float(len(samples))
            samples.append(Sample(x, value, when, run_no))
    return out


def latest(samples: Sequence[Sample]) -> list[Sample]:
    """Samples in step order; where a later run logged steps again, its samples win from there."""
    out: list[Sample] = []
    current = None  # the run of the last sample kept: compared once a sample, cheaply
    for s in samples:
        if s.run != current:
            if out and (s.run or 0) > (current or 0):
                out = [p for p in out if p.step < s.step]  # restarted here: drop what it redoes
            current = s.run
        out.append(s)
    out.sort(key=itemgetter(0))  # by step
    return out


def parse(lines: Iterable[bytes]) -> dict[str, list[Point]]:
    """Metric -> (step, value) points as the curve shows them (see the module)."""
    return {
        key: [(s.step, s.value) for s in latest(samples)]
        for key, samples in parse_samples(lines, times=False).items()
    }


def read_samples(path: str | os.PathLike[str], times: bool = True) -> dict[str, list[Sample]]:
    """Every value of a metrics file as logged (empty when there is none)."""
    try:
        with open(path, "rb") as f:
            return parse_samples(f, times)
    except FileNotFoundError:
        return {}


def read(path: str | os.PathLike[str]) -> dict[str, list[Point]]:
    """Every metric of a metrics file as curves (empty when there is none)."""
    return {
        key: [(s.step, s.value) for s in latest(samples)]
        for key, samples in read_samples(path, times=False).items()
    }


def last_value(path: str | os.PathLike[str], metric: str, block: int = 64 * 1024) -> float | None:
    """The last value of one metric (NaN or inf as such), read from the end of the file."""
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


@frozen
class Summary:
    """The last and the best value of one metric, and where it first stopped being finite."""

    metric: str
    last: float
    last_step: float
    best: float
    best_step: float
    higher_is_better: bool
    points: int
    diverged_step: float | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON form: a value that is not finite is null, with ``nonfinite`` saying which."""
        last = json_number(self.last)
        doc: dict[str, object] = {
            "last": last["value"],
            "last_step": self.last_step,
            "best": json_number(self.best)["value"],
            "best_step": self.best_step,
            "best_is": "max" if self.higher_is_better else "min",
            "points": self.points,
        }
        if "nonfinite" in last:
            doc["nonfinite"] = last["nonfinite"]
        if self.diverged_step is not None:
            doc["diverged_at"] = self.diverged_step
        return doc


def summarise(series: Mapping[str, Sequence[Point]]) -> list[Summary]:
    """The last and best value of every metric, by name (best among the finite ones)."""
    out = []
    for metric in sorted(series):
        points = series[metric]
        if not points:
            continue
        higher = higher_is_better(metric)
        finite = [p for p in points if math.isfinite(p[1])]
        best = (max if higher else min)(finite, key=lambda p: p[1]) if finite else points[-1]
        bad = next((x for x, y in points if not math.isfinite(y)), None)
        out.append(
            Summary(
                metric, points[-1][1], points[-1][0], best[1], best[0], higher, len(points), bad
            )
        )
    return out


def smooth(points: Sequence[Point], window: int) -> list[Point]:
    """A trailing moving average over ``window`` points (1 or less: unchanged); a value that
    is not finite stays as it is and is left out of its neighbours' averages."""
    if window <= 1:
        return list(points)
    out = []
    total, count = 0.0, 0  # of the finite values among the last `window` points
    for i, (x, y) in enumerate(points):
        if i >= window and math.isfinite(old := points[i - window][1]):
            total, count = total - old, count - 1
        if math.isfinite(y):
            total, count = total + y, count + 1
            out.append((x, total / count))
        else:
            out.append((x, y))
    return out
