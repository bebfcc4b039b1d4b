"""What ``show`` and ``list --metric`` read besides the records: a summary of each job's metrics.

Reads records through :mod:`handyjobs.core.jobs` and the metrics file beside the job's log;
never writes the registry.
"""

from __future__ import annotations

from collections.abc import Sequence

from handyjobs.core import jobs
from handyjobs.core.records import JobRecord, JobState
from handyjobs.structs import field, frozen
from handyjobs.views import curves


@frozen
class JobView:
    """``show``: the record and the last and best value of each metric the job logged."""

    record: JobRecord
    metrics: list[curves.Summary]


def job_view(name: str) -> JobView:
    """One job's record with a summary of its metrics."""
    record = jobs.with_final_view(jobs.get_job(name))
    return JobView(record, curves.summarise(curves.read(curves.metrics_path(record.log_path))))


@frozen
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
