"""What one look at the GPUs found: GPUs, their compute processes, and where it looked.

JSON schema of :meth:`GpuInfo.to_dict` (used by ``handyjobs gpus --json``); a fake GPU file has
the same shape, ``{"gpus": [<gpu>, ...]}``::

    {
      "index": 0,                          # int, nvidia-smi's index
      "uuid": "GPU-6a1c...",               # str ("" when unreadable); a fake may leave it out:
                                           #   "GPU-fake-<index>"
      "name": "NVIDIA A100-SXM4-80GB",     # str
      "memory_used_mib": 3,                # int; without what the driver reserves, as nvidia-smi
      "memory_total_mib": 81920,           # int
      "utilization_pct": 0,                # int or null (unknown, e.g. in MIG mode)
      "mig": false,                        # bool: MIG mode is on (a fake may leave it out)
      "error": null,                       # str or null: why (part of) this GPU could not be read
      "processes": [                       # compute processes; a fake may leave it out: []
        {"pid": 4242,                      # int, the driver's pid
         "used_memory_mib": 5000,          # int or null (unknown)
         "user": "alice",                  # str or null (null unless /proc vouches for the pid);
                                           #   a fake may leave it out: read from /proc
         "name": "python"}                 # str or null, likewise
      ]
    }

:meth:`Discovery.to_dict` wraps these as
``{"source": ..., "note": ..., "pids_comparable": ..., "gpus": [<gpu>, ...]}``; a fake file may
set ``"pids_comparable": false`` at the top to play a container whose driver reports host pids.
"""

from __future__ import annotations

from handyjobs.structs import field, frozen

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from typing import Any


@frozen
class GpuProcess:
    """A compute process running on a GPU."""

    pid: int
    used_memory_mib: int | None
    user: str | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the process as JSON-ready data (schema in the module docstring)."""
        return {
            "pid": self.pid,
            "used_memory_mib": self.used_memory_mib,
            "user": self.user,
            "name": self.name,
        }


@frozen
class GpuInfo:
    """One physical GPU as seen at discovery time."""

    index: int
    uuid: str
    name: str
    memory_used_mib: int
    memory_total_mib: int
    utilization_pct: int | None
    processes: tuple[GpuProcess, ...] = field(default=())
    #: MIG mode is on: CUDA_VISIBLE_DEVICES=<index> then exposes at most one instance.
    mig: bool = False
    #: Why part of this GPU could not be read (it then never counts as free), else None.
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the GPU as JSON-ready data (schema in the module docstring)."""
        return {
            "index": self.index,
            "uuid": self.uuid,
            "name": self.name,
            "memory_used_mib": self.memory_used_mib,
            "memory_total_mib": self.memory_total_mib,
            "utilization_pct": self.utilization_pct,
            "processes": [p.to_dict() for p in self.processes],
            "mig": self.mig,
            "error": self.error,
        }


@frozen
class Discovery:
    """What discovery found, where it looked, and (when nothing) why."""

    source: str
    gpus: tuple[GpuInfo, ...]
    note: str | None = None
    #: The driver's pids are this pid namespace's, so a job's pid can be looked for among them.
    #: False in a container whose driver reports the host's pids (see :func:`leftovers`).
    pids_comparable: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Return the discovery as JSON-ready data (schema in the module docstring)."""
        return {
            "source": self.source,
            "note": self.note,
            "pids_comparable": self.pids_comparable,
            "gpus": [g.to_dict() for g in self.gpus],
        }

    def by_index(self) -> dict[int, GpuInfo]:
        """Return the GPUs keyed by index."""
        return {g.index: g for g in self.gpus}
