"""Checkpoints: atomic saves on rank 0, loads on every rank (sent from rank 0 if it alone has it).

A checkpoint is one ``torch.save`` dict: the caller's entries (modules without their DDP
``module.`` prefix, anything with ``state_dict``, plain values) plus, under ``"handyjobs"``,
the trainer's own state: every rank's RNG streams and loader positions, and the grad scaler.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from handyjobs.trainer import collectives, rng
from handyjobs.trainer.data import Loaders
from handyjobs.trainer.errors import TrainerError, TrainerWarning
from handyjobs.trainer.models import strip_module_prefix, unwrap
from handyjobs.trainer.precision import Precision
from handyjobs.trainer.state import ProcessState

#: Key under which ``save`` stores the trainer's own state (RNG, loaders, grad scaler).
STATE_KEY = "handyjobs"


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write ``obj`` next to ``path`` and rename it into place, so no reader sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600; give the file the mode torch.save would have given it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


class Checkpoints:
    """save / load / save_model for one trainer: its state, loaders and precision."""

    def __init__(self, state: ProcessState, loaders: Loaders, precision: Precision) -> None:
        """Bind to the parts whose state a checkpoint carries."""
        self.state = state
        self.loaders = loaders
        self.precision = precision

    def _own_state(self) -> dict[str, Any]:
        """This process's RNG and loader state, which differ across ranks."""
        return {"rng": rng.capture(self.state.device), **self.loaders.state_dict()}

    def save(self, path: str | os.PathLike[str], **objects: Any) -> None:
        """Save models, optimizers, schedulers, numbers, RNG and loader state; call on all ranks."""
        if STATE_KEY in objects:
            raise TrainerError(f"'{STATE_KEY}' is reserved for the trainer's own state")
        self.state.check_open()
        payload: dict[str, Any] = {}
        for name, value in objects.items():
            if isinstance(value, nn.Module):
                payload[name] = unwrap(value).state_dict()
            elif callable(getattr(value, "state_dict", None)):
                payload[name] = value.state_dict()
            else:
                payload[name] = value
        per_rank = collectives.gather(self.state, self._own_state())
        if self.state.is_main:
            scaler = self.precision.scaler
            payload[STATE_KEY] = {
                "version": 1,
                "world_size": self.state.world_size,
                "ranks": per_rank,
                "scaler": scaler.state_dict() if scaler is not None else None,
            }
            atomic_torch_save(payload, Path(path))
        self.state.barrier()

    def save_model(
        self, ckpt: Mapping[str, Any], model: nn.Module, path: str | os.PathLike[str]
    ) -> None:
        """Save ``{**ckpt, 'state_dict': ...}`` atomically on global rank 0, then wait for it."""
        if self.state.is_main:
            payload = dict(ckpt)
            payload["state_dict"] = unwrap(model).state_dict()
            atomic_torch_save(payload, Path(path))
        self.state.barrier()

    def read(self, path: Path) -> dict[str, Any]:
        """Load to CPU; when only rank 0 can see the file (no shared disk), it sends the bytes.

        The bytes go in chunks of CPU tensors over the CPU group, so neither side stages the
        whole file in GPU memory (``broadcast_object_list`` over nccl would, on every GPU).
        """
        state = self.state
        here = path.is_file()
        everywhere = (
            collectives.all_reduce(state, int(here), "min") == 1 if state.distributed else here
        )
        if everywhere:
            return torch.load(path, map_location="cpu", weights_only=True)  # type: ignore[no-any-return]
        at_main = collectives.broadcast(state, here) if state.distributed else here
        if not at_main:
            raise TrainerError(f"checkpoint {path} not found; check the path or start afresh")
        blob = path.read_bytes() if state.is_main else None
        payload = collectives.broadcast_bytes(state, blob)
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)  # type: ignore[no-any-return]

    def load(self, path: str | os.PathLike[str], **objects: Any) -> dict[str, Any]:
        """Restore what ``save`` wrote into the given objects; return every saved value."""
        self.state.check_open()
        checkpoint = self.read(Path(path))
        missing = [name for name in objects if name not in checkpoint]
        if missing:
            raise TrainerError(
                f"checkpoint {path} has no {', '.join(missing)}; it holds "
                f"{', '.join(k for k in checkpoint if k != STATE_KEY) or 'nothing'}"
            )
        for name, target in objects.items():
            if isinstance(target, nn.Module):
                unwrap(target).load_state_dict(strip_module_prefix(checkpoint[name]))
            elif callable(getattr(target, "load_state_dict", None)):
                target.load_state_dict(checkpoint[name])
        own = checkpoint.pop(STATE_KEY, None)
        if own is not None:
            self._restore_own_state(own)
        return checkpoint

    def _restore_own_state(self, own: Mapping[str, Any]) -> None:
        """Put back this rank's RNG streams, loader epochs and the grad scaler."""
        state = self.state
        ranks = own.get("ranks") or []
        if own.get("world_size") != state.world_size and state.is_main:
            warnings.warn(
                f"checkpoint was saved by {own.get('world_size')} process(es), this run has "
                f"{state.world_size}: data order and random streams will not match the old run",
                TrainerWarning,
                stacklevel=4,
            )
        if ranks:
            mine = ranks[state.rank % len(ranks)]
            rng.restore(mine.get("rng", {}), state.device)
            self.loaders.load_state_dict(mine)
        scaler_state = own.get("scaler")
        scaler = self.precision.scaler
        if scaler is not None and scaler_state:
            scaler.load_state_dict(scaler_state)
