"""Where the lifecycle's transitions read and put records, and what reconciling asks a backend.

:class:`Store` is the locked registry or a :class:`Scratch` copy of records read without the
lock (which finds out whether a write is needed at all); :class:`Probe` is the part of a run's
backend that reconciling asks. Transitions themselves are in :mod:`handyjobs.core.lifecycle`.
"""

from __future__ import annotations

from handyjobs.core.records import ClusterState, JobRecord, Run
from handyjobs.structs import Protocol


class Store(Protocol):
    """Where transitions read and put records: the locked registry, or a scratch copy."""

    def get(self, name: str) -> JobRecord | None:
        """A record by name."""

    def put(self, record: JobRecord) -> None:
        """Keep a changed record."""


class Probe(Protocol):
    """What reconciling asks the run's backend: is the runner there, what of the run is left."""

    #: True when the backend's own scheduler queues runs (its view then decides, not pids).
    queues: bool

    def observe(self, run: Run) -> ClusterState | None:
        """The scheduler's view of the run, or None when it cannot be had now."""

    def runner_alive(self, run: Run) -> bool:
        """True while the run's runner process (or remote allocation) exists."""

    def leftover_pids(self, run: Run) -> tuple[int, ...]:
        """Processes of the run still alive (by marker), for a run being declared lost."""


class Scratch:
    """A :class:`Store` over records read without the lock: finds out whether anything changes."""

    def __init__(self, records: list[JobRecord]) -> None:
        """Index the records by name; :attr:`changed` collects the names put back."""
        self.records = {r.name: r for r in records}
        self.changed: set[str] = set()

    def get(self, name: str) -> JobRecord | None:
        """A record by name."""
        return self.records.get(name)

    def put(self, record: JobRecord) -> None:
        """Keep a changed record."""
        self.records[record.name] = record
        self.changed.add(record.name)
