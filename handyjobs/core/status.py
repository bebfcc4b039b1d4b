"""The run's status file as the core reads it: what the job side wrote, torn reads retried."""

from __future__ import annotations

import json
import time
from pathlib import Path

from handyjobs.core import paths
from handyjobs.core.records import RunStatus


def read_status(name: str, run_id: str, root: Path) -> RunStatus | None:
    """The run's status file, or None when there is none (yet) or it cannot be read.

    The runner may be rewriting it in place (on a full disk): a torn read is read again.
    """
    path = paths.status_path(name, run_id, root)
    for attempt in range(3):
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            status = RunStatus.from_dict(json.loads(data))
        except (ValueError, KeyError, TypeError):
            if attempt < 2:
                time.sleep(0.01)
            continue
        return status if status.run_id == run_id else None
    return None
