"""Precision and accumulation: autocast, the fp16 grad scaler, micro-steps, clipping, stepping."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from handyjobs.trainer.devices import bf16_advice
from handyjobs.trainer.errors import TrainerError, TrainerWarning
from handyjobs.trainer.settings import config_value

PRECISIONS: dict[str, str] = {
    "32": "32",
    "32-true": "32",
    "fp32": "32",
    "float32": "32",
    "bf16": "bf16",
    "bf16-mixed": "bf16",
    "bfloat16": "bf16",
    "16": "fp16",
    "16-mixed": "fp16",
    "fp16": "fp16",
    "float16": "fp16",
}


def resolve_precision(config: Any) -> str:
    """Normalise config.precision to '32', 'bf16' or 'fp16'."""
    raw = str(config_value(config, "precision", "32")).lower()
    if raw not in PRECISIONS:
        raise TrainerError(
            f"config.precision={raw!r} is not one of {sorted(set(PRECISIONS))}; "
            "use '32', 'bf16' or 'fp16'"
        )
    return PRECISIONS[raw]


class Precision:
    """How one trainer runs a step: autocast dtype, grad scaler, gradient accumulation."""

    def __init__(self, name: str, device: torch.device) -> None:
        """``name`` is a resolved precision ('32', 'bf16' or 'fp16')."""
        self.name = name
        self.device = device
        self.scaler: torch.amp.GradScaler | None = (
            torch.amp.GradScaler(device.type) if name == "fp16" else None
        )
        self.sync_gradients = True
        self._loss_scale = 1.0
        self._micro_steps: dict[int, int] = {}
        if name == "bf16" and device.type == "cuda":
            advice = bf16_advice(
                torch.cuda.get_device_capability(device), torch.cuda.get_device_name(device)
            )
            if advice:
                warnings.warn(advice, TrainerWarning, stacklevel=4)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision for the forward pass (a no-op for '32')."""
        if self.name == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.name == "fp16":
            return torch.autocast(self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """``loss.backward()``, scaled for fp16 and divided by the steps of ``accumulate``."""
        if self._loss_scale != 1.0:
            loss = loss * self._loss_scale
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward(**kwargs)  # type: ignore[no-untyped-call]

    @contextlib.contextmanager
    def accumulate(self, model: nn.Module, steps: int) -> Iterator[bool]:
        """Accumulate gradients over ``steps`` micro-steps; yields True on the one that syncs."""
        if steps < 1:
            raise TrainerError(f"accumulate steps={steps}; use 1 or more")
        key = id(model)
        count = self._micro_steps.get(key, 0) + 1
        sync = count >= steps
        self._micro_steps[key] = 0 if sync else count
        self.sync_gradients = sync
        previous_scale = self._loss_scale
        self._loss_scale = 1.0 / steps
        skip_sync = (
            model.no_sync()
            if isinstance(model, DistributedDataParallel) and not sync
            else contextlib.nullcontext()
        )
        try:
            with skip_sync:
                yield sync
        finally:
            self._loss_scale = previous_scale

    def clip_grad_norm(
        self,
        model: nn.Module | Iterable[torch.Tensor],
        max_norm: float,
        norm_type: float = 2.0,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> torch.Tensor:
        """Clip gradients to ``max_norm`` and return their total norm (unscaled first for fp16)."""
        if self.scaler is not None:
            if optimizer is None:
                raise TrainerError(
                    "precision is fp16: pass optimizer= to clip_grad_norm so the gradients are "
                    "unscaled before clipping"
                )
            self.scaler.unscale_(optimizer)
        params = model.parameters() if isinstance(model, nn.Module) else model
        return torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)

    def step(self, optimizer: torch.optim.Optimizer, zero_grad: bool = True) -> None:
        """``optimizer.step()`` (through the grad scaler for fp16), then zero the gradients."""
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        if zero_grad:
            # None instead of zeros: no memset, and DDP re-points them at its buckets.
            optimizer.zero_grad(set_to_none=True)
