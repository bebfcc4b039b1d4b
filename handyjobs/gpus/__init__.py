"""GPU discovery (NVML, nvidia-smi, the fake seam) and GPU spec parsing; no policy.

``from handyjobs import gpus`` then ``gpus.discover()``, ``gpus.watch()`` and
``gpus.leftovers()`` is the documented way to read GPUs from code; the names are re-exported
from :mod:`handyjobs.gpus.discovery`, where they live. They load on first use: every command
imports :mod:`handyjobs.gpus.model` (through this package), and most never look at a GPU.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from typing import Any

    from handyjobs.gpus.discovery import (
        Discovery,
        GpuInfo,
        GpuProcess,
        discover,
        leftovers,
        watch,
    )

__all__ = ["Discovery", "GpuInfo", "GpuProcess", "discover", "leftovers", "watch"]


def __getattr__(name: str) -> Any:
    """The re-exported names, from :mod:`handyjobs.gpus.discovery` when first asked for."""
    if name in __all__:
        return getattr(importlib.import_module("handyjobs.gpus.discovery"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
