"""Precision and accumulation: autocast, the fp16 grad scaler, micro-steps, clipping, stepping."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator
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
    """How one trainer runs a step: autocast dtype, grad scaler, gradient accumulation.

    With fp16 the scaler's ``update`` waits until every optimizer of the step has stepped (it
    runs at the next ``backward`` or ``save``): updating after the first optimizer would unscale
    the second one's gradients with a scale they were not multiplied by.
    """

    def __init__(
        self,
        name: str,
        device: torch.device,
        sharded: bool = False,
        batches_left: Callable[[], int | None] | None = None,
    ) -> None:
        """``name`` is a resolved precision ('32', 'bf16' or 'fp16'); ``sharded`` means FSDP."""
        self.name = name
        self.device = device
        self.scaler: torch.amp.GradScaler | None = None
        if name == "fp16":
            self.scaler = make_scaler(device, sharded)
        self.sync_gradients = True
        self._batches_left = batches_left or (lambda: None)
        self._loss_scale = 1.0
        self._windows: dict[int, tuple[int, int]] = {}
        self._stepped: set[int] = set()
        if name == "bf16" and device.type == "cuda":
            advice = bf16_advice(
                torch.cuda.get_device_capability(device), torch.cuda.get_device_name(device)
            )
            if advice:
                warnings.warn(advice, TrainerWarning, stacklevel=4)

    def settle(self) -> None:
        """Update the fp16 scale once the optimizers of the last step have all stepped."""
        if self.scaler is not None and self._stepped:
            self._stepped.clear()
            self.scaler.update()

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision for the forward pass (a no-op for '32')."""
        if self.name == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.name == "fp16":
            return torch.autocast(self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """``loss.backward()``, scaled for fp16 and divided by the steps of ``accumulate``."""
        self.settle()
        if self._loss_scale != 1.0:
            loss = loss * self._loss_scale
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward(**kwargs)  # type: ignore[no-untyped-call]

    @contextlib.contextmanager
    def accumulate(self, model: nn.Module, steps: int) -> Iterator[bool]:
        """Accumulate gradients over ``steps`` micro-steps; yields True on the one that syncs.

        A window never runs across the end of a pass of the trainer's loader: when fewer than
        ``steps`` batches are left, the window is that short and each loss is divided by its
        length, so the step still sees the mean gradient of the batches it covers.
        """
        if steps < 1:
            raise TrainerError(f"accumulate steps={steps}; use 1 or more")
        key = id(model)
        size, done = self._windows.get(key, (steps, 0))
        if done == 0:
            left = self._batches_left()
            size = steps if left is None else max(1, min(steps, left + 1))
        done += 1
        sync = done >= size
        self._windows[key] = (steps, 0) if sync else (size, done)
        self.sync_gradients = sync
        previous_scale = self._loss_scale
        self._loss_scale = 1.0 / size
        try:
            with skip_gradient_sync(model, sync):
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
            if id(optimizer) in self._stepped:
                self.settle()
            with quiet_dtensor_scalars():
                self.scaler.unscale_(optimizer)
        params = model.parameters() if isinstance(model, nn.Module) else model
        total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
        full = getattr(total, "full_tensor", None)  # a DTensor under FSDP
        return full() if callable(full) else total

    def step(self, optimizer: torch.optim.Optimizer, zero_grad: bool = True) -> bool:
        """``optimizer.step()`` (through the grad scaler for fp16), then zero the gradients.

        Returns whether the optimizer stepped: False when the fp16 scaler skipped the step
        because a gradient was inf or NaN.
        """
        fired: list[bool] = []
        handle = optimizer.register_step_pre_hook(lambda *_: fired.append(True))
        try:
            if self.scaler is not None:
                if id(optimizer) in self._stepped:
                    self.settle()  # stepped twice without a backward between: a new step
                with quiet_dtensor_scalars():
                    self.scaler.step(optimizer)
                self._stepped.add(id(optimizer))
            else:
                optimizer.step()
        finally:
            handle.remove()
        stepped = bool(fired) and not found_inf(self.scaler, optimizer)
        if zero_grad:
            # None instead of zeros: no memset, and DDP re-points them at its buckets.
            optimizer.zero_grad(set_to_none=True)
        return stepped


def make_scaler(device: torch.device, sharded: bool) -> torch.amp.GradScaler:
    """The fp16 grad scaler; under FSDP the one that agrees on inf/NaN across the shards."""
    if not sharded:
        return torch.amp.GradScaler(device.type)
    # Imported only for FSDP: importing torch's FSDP costs over a second of start-up.
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    return ShardedGradScaler(device.type)


def found_inf(scaler: torch.amp.GradScaler | None, optimizer: torch.optim.Optimizer) -> bool:
    """Whether the scaler found inf/NaN in ``optimizer``'s gradients at its last ``step``.

    A fused optimizer is called even then (it skips inside its kernel), so the step hook alone
    cannot tell. GradScaler keeps these checks until ``update()`` and has no public accessor.
    """
    if scaler is None:
        return False
    states = getattr(scaler, "_per_optimizer_states", {})
    found = states.get(id(optimizer), {}).get("found_inf_per_device", {})
    return any(bool(value.item()) for value in found.values())


def skip_gradient_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
    """Keep gradients local on a micro-step that does not sync: DDP's no_sync, FSDP's flag."""
    if isinstance(model, DistributedDataParallel):
        return model.no_sync() if not sync else contextlib.nullcontext()
    set_sync = getattr(model, "set_requires_gradient_sync", None)
    if callable(set_sync):  # an FSDP2 module
        set_sync(sync)
    return contextlib.nullcontext()


@contextlib.contextmanager
def quiet_dtensor_scalars() -> Iterator[None]:
    """Hide DTensor's warning about the scaler's one-element inf flag (harmless, every step)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Found a non-scalar tensor with numel=1")
        yield
