"""Metrics as JSON lines: ``log_metrics`` appends (``handyjobs.views.curves`` reads them).

No torch here: any script can log without the trainer.

One line per call (the schema; keys in this order; wrapped here, one line in the file)::

    {"step": 120, "time": "2025-03-01T12:00:00.123Z", "run": 2,
     "values": {"loss": 0.41, "lr": 0.0003}}
    {"step": 130, "time": "...", "run": 2, "values": {"loss": null}, "nonfinite": {"loss": "nan"}}

``step``
    the caller's step, an integer, or null when none was given.
``time``
    when the line was written: ISO-8601 UTC with milliseconds, as handyjobs' records.
``run``
    ``HANDYJOBS_RUN`` (the job's run number, which grows with each restart), or null outside
    handyjobs, so a restarted job's lines can be told apart.
``values``
    metric name -> number. Anything ``float()`` accepts is taken (Python and NumPy numbers,
    one-element tensors). A value that is not finite (NaN, +inf, -inf) is written as null, so
    every line is strict JSON that jq, JavaScript and pandas read.
``nonfinite``
    only on a line with such a value: metric name -> ``"nan"``, ``"inf"`` or ``"-inf"``, so
    readers show a diverged loss as diverged (``plot``, ``show``, ``list --metric``).

Where: the ``path`` argument, else ``$HANDYJOBS_METRICS_FILE`` (``handyjobs start`` points it
into the job's folder), else ``./metrics.jsonl``. Each line is a single ``write`` on a
descriptor opened with ``O_APPEND``, under an exclusive ``flock`` among writers, so lines of
concurrent writers never interleave (on a local file system); a file that does not exist yet
is created with mode 0600. If a writer died mid-line (SIGKILL, a full disk), the next line
starts on a fresh line, and the readers skip the torn one.

Best values (``show``, ``plot``): the minimum, except for names that read as a score: split on
anything that is not a letter or a digit, a name whose part is ``acc``, ``accuracy``, ``f1``,
``auc``, ``auroc``, ``map``, ``iou``, ``dice``, ``precision``, ``recall``, ``score``,
``top1`` or ``top5``, or begins with ``acc``, ``bleu`` or ``rouge`` (``val/acc``, ``top1_acc``,
``rougeL``, ``f1_macro``), takes the maximum.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import operator
import os
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from handyjobs.errors import HandyjobsError
from handyjobs.structs import field, frozen

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from typing import Any

METRICS_FILE_ENV = "HANDYJOBS_METRICS_FILE"
DEFAULT_METRICS_FILE = "metrics.jsonl"

_SCORE_WORDS = frozenset(
    {
        "acc",
        "accuracy",
        "f1",
        "auc",
        "auroc",
        "map",
        "iou",
        "dice",
        "precision",
        "recall",
        "score",
        "top1",
        "top5",
    }
)
_SCORE_PREFIXES = ("acc", "bleu", "rouge")


class MetricsError(HandyjobsError, ValueError):
    """A metric that cannot be written (a name that is not a string, a value that is no number)."""


@frozen
class MetricRecord:
    """One line of a metrics file."""

    step: int | None
    time: str
    run: int | None
    values: dict[str, float | None] = field(default_factory=dict)
    #: The values written as null because they were not finite: name -> "nan", "inf", "-inf".
    nonfinite: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The line's JSON object, keys in schema order (``nonfinite`` only when needed)."""
        doc: dict[str, Any] = {"step": self.step, "time": self.time, "run": self.run}
        doc["values"] = self.values
        if self.nonfinite:
            doc["nonfinite"] = self.nonfinite
        return doc


def metrics_path(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Path:
    """Where ``log_metrics`` writes: ``path``, else ``$HANDYJOBS_METRICS_FILE``, else here."""
    if path is not None:
        return Path(path)
    env = os.environ if env is None else env
    return Path(env.get(METRICS_FILE_ENV, "").strip() or DEFAULT_METRICS_FILE)


def _utc_now() -> str:
    """Now as ISO-8601 UTC with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _run_number(env: Mapping[str, str]) -> int | None:
    """``HANDYJOBS_RUN`` as an int, or None outside handyjobs (or when malformed)."""
    try:
        return int(env.get("HANDYJOBS_RUN", "").strip())
    except ValueError:
        return None


def make_record(
    values: Mapping[str, Any], step: Any = None, env: Mapping[str, str] | None = None
) -> MetricRecord:
    """Check and convert what ``log_metrics`` was given into a record."""
    env = os.environ if env is None else env
    if not isinstance(values, Mapping):
        raise MetricsError(
            f"log_metrics takes a mapping of name -> number, not {type(values).__name__}"
        )
    clean: dict[str, float | None] = {}
    flags: dict[str, str] = {}
    for name, value in values.items():
        if not isinstance(name, str) or not name:
            raise MetricsError(f"metric names must be non-empty strings, not {name!r}")
        try:
            number = float(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise MetricsError(
                f"metric {name!r}: {value!r} is not a number (one-element tensors and NumPy "
                f"scalars are fine): {exc}"
            ) from None
        clean[name] = number if math.isfinite(number) else None
        if clean[name] is None:
            flags[name] = "nan" if math.isnan(number) else ("inf" if number > 0 else "-inf")
    if step is not None:
        try:
            step = operator.index(step)
        except TypeError:
            raise MetricsError(f"step must be an integer, not {step!r}") from None
    return MetricRecord(step, _utc_now(), _run_number(env), clean, flags)


def log_metrics(
    values: Mapping[str, Any],
    step: int | None = None,
    path: str | os.PathLike[str] | None = None,
) -> None:
    """Append one JSON line of ``values`` (name -> number) to the metrics file (see the module)."""
    record = make_record(values, step)
    line = json.dumps(record.to_dict(), allow_nan=False, ensure_ascii=False) + "\n"
    append_line(metrics_path(path), line.encode("utf-8"))


def append_line(target: Path, data: bytes) -> None:
    """Append ``data`` with one write on an O_APPEND descriptor; start afresh after a torn line."""
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(target, flags, 0o600)
    try:
        # O_APPEND alone keeps whole writes apart, but the torn-line check below reads the
        # end of the file, which may be another writer's line half copied: a lock among
        # writers makes check and write one step (measured: blank lines without it).
        with contextlib.suppress(OSError):
            # A file system without locks (Lustre without -o flock): one O_APPEND write
            # still lands whole; a metric is never worth failing the training step.
            fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            # A writer died mid-line: keep its fragment on a line of its own.
            data = b"\n" + data
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    finally:
        os.close(fd)


def higher_is_better(metric: str) -> bool:
    """Whether a metric's best value is its maximum (a score) rather than its minimum (a loss)."""
    for part in re.split(r"[^a-z0-9]+", metric.lower()):
        if part in _SCORE_WORDS or part.startswith(_SCORE_PREFIXES):
            return True
    return False
