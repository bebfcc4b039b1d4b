"""GPU discovery (NVML, nvidia-smi, the fake seam) and GPU spec parsing; no policy.

``from handyjobs import gpus`` then ``gpus.discover()``, ``gpus.watch()`` and
``gpus.leftovers()`` is the documented way to read GPUs from code; the names are re-exported
from :mod:`handyjobs.gpus.discovery`, where they live.
"""

from __future__ import annotations

from handyjobs.gpus.discovery import Discovery, GpuInfo, GpuProcess, discover, leftovers, watch

__all__ = ["Discovery", "GpuInfo", "GpuProcess", "discover", "leftovers", "watch"]
