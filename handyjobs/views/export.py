"""``handyjobs metrics``: every value jobs logged, in long format (one row a value), for pandas,
spreadsheets and TensorBoard. Rows keep each run's points as logged (``run`` tells them apart)
and a value that is not finite as such (``nan`` in CSV; null and ``nonfinite`` in JSON)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from handyjobs.errors import UsageError
from handyjobs.structs import frozen
from handyjobs.views import curves, jobcurves

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from typing import TextIO

#: The columns, in order: pandas reads them with ``pd.read_csv(f, parse_dates=["time"])``.
COLUMNS = ("job", "run", "step", "time", "metric", "value", "params")

#: What to type when TensorBoard is missing.
TENSORBOARD_HINT = "--tensorboard needs the tensorboard package: pip install tensorboard"


@frozen
class Row:
    """One logged value of one job."""

    job: str
    run: int | None
    step: float
    time: float | None
    metric: str
    value: float
    params: dict[str, str]

    def iso_time(self) -> str | None:
        """When it was logged, ISO-8601 UTC with milliseconds (None when the line had no time)."""
        if self.time is None:
            return None
        when = datetime.fromtimestamp(self.time, timezone.utc)
        return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def to_dict(self) -> dict[str, object]:
        """JSON form: a value that is not finite is null, with ``nonfinite`` saying which."""
        doc: dict[str, object] = {
            "job": self.job,
            "run": self.run,
            "step": _step(self.step),
            "time": self.iso_time(),
            "metric": self.metric,
        }
        doc.update(curves.json_number(self.value))
        doc["params"] = self.params
        return doc


def _step(step: float) -> int | float:
    return int(step) if step.is_integer() else step


def rows(names: Sequence[str], group: str | None = None) -> list[Row]:
    """Every value of the jobs named and of ``group``: job by job, in step order."""
    out: list[Row] = []
    for record in jobcurves.pick_jobs(names, group):
        params = dict(record.spec.params)
        found = curves.read_samples(curves.metrics_path(record.log_path))
        mine = [
            Row(record.name, s.run, s.step, s.time, metric, s.value, params)
            for metric, samples in found.items()
            for s in samples
        ]
        out += sorted(mine, key=lambda r: (r.run or 0, r.step))  # stable: file order kept
    return out


def write_csv(found: Iterable[Row], out: TextIO) -> None:
    """The rows as CSV with a header; values as Python writes floats (``nan``, ``inf``)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in found:
        writer.writerow(
            [
                r.job,
                "" if r.run is None else r.run,
                _step(r.step),
                r.iso_time() or "",
                r.metric,
                repr(r.value),
                json.dumps(r.params, separators=(",", ":")) if r.params else "",
            ]
        )


def need_tensorboard() -> None:
    """Raise the one line that says how to get TensorBoard when it is not installed."""
    import importlib.util  # lazy: only --tensorboard asks

    if importlib.util.find_spec("tensorboard") is None:
        raise UsageError(TENSORBOARD_HINT)


def write_tensorboard(found: Sequence[Row], folder: Path) -> list[Path]:
    """Event files TensorBoard reads, one folder a job (``DIR/NAME``); needs ``tensorboard``."""
    need_tensorboard()
    from tensorboard.compat.proto.event_pb2 import (
        Event,  # lazy: an optional extra, only for --tensorboard
    )
    from tensorboard.compat.proto.summary_pb2 import (
        Summary,  # lazy: an optional extra, only for --tensorboard
    )
    from tensorboard.summary.writer.event_file_writer import (
        EventFileWriter,  # lazy: an optional extra, only for --tensorboard
    )

    written = []
    for job in dict.fromkeys(r.job for r in found):
        target = folder / job
        writer = EventFileWriter(str(target))
        for r in found:
            if r.job != job or not math.isfinite(r.value):
                continue  # TensorBoard draws a NaN as nothing: it is left out alike
            value = Summary.Value(tag=r.metric, simple_value=r.value)
            writer.add_event(
                Event(wall_time=r.time or 0.0, step=int(r.step), summary=Summary(value=[value]))
            )
        writer.close()
        written.append(target)
    return written
