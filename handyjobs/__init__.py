"""handyjobs: PyTorch training jobs in tmux, and one trainer for CPU, one GPU or DDP.

``handyjobs.log_metrics`` appends a training curve's points for ``handyjobs plot``.
Importing the package loads no torch: ``ParallelTrainer`` (and its seed alias
``Parallel_Trainer``) are resolved lazily from :mod:`handyjobs.trainer` on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["ParallelTrainer", "Parallel_Trainer", "__version__", "log_metrics"]

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from typing import Any

    from handyjobs.metrics import log_metrics
    from handyjobs.trainer import Parallel_Trainer, ParallelTrainer


def __getattr__(name: str) -> Any:
    """Import the trainer (and torch) only when a trainer name is asked for."""
    if name in ("ParallelTrainer", "Parallel_Trainer"):
        from handyjobs import trainer  # lazy: importing the trainer imports torch

        return getattr(trainer, name)
    if name == "log_metrics":  # torch-free: any script may log curves for `handyjobs plot`
        from handyjobs.metrics import log_metrics

        return log_metrics
    raise AttributeError(f"module 'handyjobs' has no attribute {name!r}")
