"""A job's limits on this machine, as ``start`` checks them: ``--time``, ``--mem``, and
``--signal-before``.

The runner enforces them (:mod:`handyjobs.jobside.limits`): the warning signal before the time
limit, the stop sequence at it, and the memory limit of the run's cgroup. A job sent to a
cluster's scheduler gives the same options to that scheduler instead (its backend reads them
from the command line), so nothing here applies to it. A limit is never dropped silently: one
this machine cannot enforce (``--mem`` with no writable memory controller) is refused here,
before the job is queued.
"""

from __future__ import annotations

import re

from handyjobs.core import cgroups
from handyjobs.errors import UsageError

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from typing import Any

    from handyjobs.core.spec import StartRequest

#: Seconds before the time limit at which the warning comes, unless ``--signal-before`` says.
DEFAULT_SIGNAL_BEFORE_S = 60

_UNITS = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
# sbatch's forms: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
_CLOCK = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_duration(text: str) -> int:
    """``2h30m``, ``90m``, ``45s``, ``1d``, ``1:30:00`` or plain minutes (as sbatch) -> seconds."""
    raw = text.strip().lower()
    seconds = -1
    units = _UNITS.match(raw)
    clock = _CLOCK.match(raw)
    if raw and units:
        d, h, m, s = (int(x or 0) for x in units.groups())
        seconds = ((d * 24 + h) * 60 + m) * 60 + s
    elif clock:
        days, a, b, c = clock.groups()
        if days is not None:  # D-HH[:MM[:SS]]
            parts = [int(days) * 24 + int(a), int(b or 0), int(c or 0)]
        elif c is not None:  # HH:MM:SS
            parts = [int(a), int(b), int(c)]
        else:  # MM or MM:SS
            parts = [0, int(a), int(b or 0)]
        seconds = (parts[0] * 60 + parts[1]) * 60 + parts[2]
    if seconds <= 0:
        raise UsageError(
            f"--time {text!r}: give a duration such as 2h30m, 90m, 45s, 1:30:00, or minutes (90)"
        )
    return seconds


def warning_lead(limit_s: int, before_s: int | None) -> int:
    """Seconds before the limit that the warning comes: ``--signal-before``, else 60 s but at
    most half the limit (a short limit still warns a job that has started listening)."""
    return before_s if before_s is not None else min(DEFAULT_SIGNAL_BEFORE_S, limit_s // 2)


def spec_fields(req: StartRequest) -> dict[str, Any]:
    """The spec's limit fields for a job that runs on this machine, checked; {} for a job
    that goes to a cluster's scheduler (its backend took these options)."""
    if req.backend is not None and req.backend.submits:
        return {}
    out: dict[str, Any] = {}
    if req.time_limit is not None:
        out["time_limit"] = parse_duration(req.time_limit)
    if req.signal_before is not None:
        limit = out.get("time_limit")
        if limit is None:
            raise UsageError("--signal-before goes with --time: the warning comes before it")
        if not 0 < req.signal_before < limit:
            raise UsageError(
                f"--signal-before {req.signal_before}: give seconds between 1 and the --time "
                f"limit ({limit} s)"
            )
        out["signal_before"] = req.signal_before
    if req.mem_limit is not None:
        out["mem_limit"] = cgroups.parse_memory(req.mem_limit)
        if not cgroups.can_limit_memory():
            raise UsageError(cgroups.NO_MEMORY_LIMIT)
    return out
