"""Checkpoints: one file written atomically by rank 0, or a sharded folder (FSDP); loads everywhere.

A one-file checkpoint is one ``torch.save`` dict: the caller's entries (modules without their
DDP ``module.`` prefix, FSDP models and their optimizers gathered in full, anything with
``state_dict``, plain values) plus, under ``"handyjobs"``, the trainer's own state: every rank's
RNG streams and loader positions, and the grad scaler. A sharded checkpoint (the default for
FSDP models) is a folder: see ``sharded.py``.
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

from handyjobs.trainer import collectives, entries, fsdp, rng, sharded
from handyjobs.trainer.data import Loaders
from handyjobs.trainer.errors import TrainerError, TrainerWarning
from handyjobs.trainer.models import is_sharded, strip_module_prefix, unwrap
from handyjobs.trainer.precision import Precision
from handyjobs.trainer.state import ProcessState

#: Key under which ``save`` stores the trainer's own state (RNG, loaders, grad scaler).
STATE_KEY = "handyjobs"

#: Version 2 added each loader's position inside its pass ("start") and iterable loaders.
VERSION = 2


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
        if path.is_dir():
            sharded.publish(Path(tmp_name), path)  # a sharded checkpoint was there before
        else:
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

    def _own_state(self) -> dict[str, Any] | None:
        """Every rank's RNG and loader state, and the scaler, on rank 0 (None elsewhere)."""
        self.precision.settle()
        mine = {"rng": rng.capture(self.state.device), **self.loaders.state_dict()}
        per_rank = collectives.gather(self.state, mine)
        if not self.state.is_main:
            return None
        scaler = self.precision.scaler
        return {
            "version": VERSION,
            "world_size": self.state.world_size,
            "ranks": per_rank,
            "scaler": scaler.state_dict() if scaler is not None else None,
        }

    def save(self, path: str | os.PathLike[str], in_shards: bool | None, **objects: Any) -> None:
        """Save models, optimizers, schedulers, values, RNG and loader state; call on all ranks."""
        if STATE_KEY in objects:
            raise TrainerError(f"'{STATE_KEY}' is reserved for the trainer's own state")
        self.state.check_open()
        found = entries.sort(objects)
        plain = {name: value.state_dict() for name, value in found.stateful.items()}
        plain.update(found.values)
        # Before any collective, so that every rank refuses together instead of hanging.
        entries.check_loadable(plain)
        if in_shards is None:
            in_shards = any(is_sharded(module) for module in found.modules.values())
        own = self._own_state()
        if in_shards:
            sharded.save(self.state, Path(path), found, {**plain, STATE_KEY: own})
            return
        payload = self._full_tensors(found)
        payload.update(plain)
        if self.state.is_main:
            payload[STATE_KEY] = own
            atomic_torch_save(payload, Path(path))
        self.state.barrier()

    def _full_tensors(self, found: entries.Entries) -> dict[str, Any]:
        """Models and optimizers in full: FSDP's gathered on rank 0 (a collective), others as is."""
        payload: dict[str, Any] = {}
        for name, module in found.modules.items():
            if is_sharded(module):
                payload[name] = fsdp.model_state(module, full=True)
            else:
                payload[name] = unwrap(module).state_dict()
        for name, (optimizer, owner) in found.optimizers.items():
            if owner is not None and is_sharded(owner):
                payload[name] = fsdp.optimizer_state(owner, optimizer, full=True)
            else:
                payload[name] = optimizer.state_dict()
        return payload

    def save_model(
        self, ckpt: Mapping[str, Any], model: nn.Module, path: str | os.PathLike[str]
    ) -> None:
        """Save ``{**ckpt, 'state_dict': ...}`` atomically on global rank 0, then wait for it."""
        # An FSDP model's full weights are gathered from every rank: a collective.
        weights = fsdp.model_state(model, full=True) if is_sharded(model) else None
        if self.state.is_main:
            payload = dict(ckpt)
            payload["state_dict"] = weights if weights is not None else unwrap(model).state_dict()
            atomic_torch_save(payload, Path(path))
        self.state.barrier()

    def read(self, path: Path, weights_only: bool = True) -> dict[str, Any]:
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
            return torch.load(path, map_location="cpu", weights_only=weights_only)  # type: ignore[no-any-return]
        at_main = collectives.broadcast(state, here) if state.distributed else here
        if not at_main:
            raise TrainerError(f"checkpoint {path} not found; check the path or start afresh")
        blob = path.read_bytes() if state.is_main else None
        payload = collectives.broadcast_bytes(state, blob)
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=weights_only)  # type: ignore[no-any-return]

    def load(
        self, path: str | os.PathLike[str], strict: bool, weights_only: bool, **objects: Any
    ) -> dict[str, Any]:
        """Restore what ``save`` wrote into the given objects; return every saved value."""
        self.state.check_open()
        target = Path(path)
        found = entries.sort(objects)
        folder = sharded.is_sharded_checkpoint(target)
        if self.state.distributed:
            folder = self._agree_on_folder(target, folder)
        if folder:
            checkpoint = sharded.read_extra(target, weights_only)
            saved_tensors = list(checkpoint.pop("tensors", []))
            self._check_names(target, objects, [*checkpoint, *saved_tensors])
            sharded.load(self.state, target, found, strict)
        else:
            checkpoint = self.read(target, weights_only)
            self._check_names(target, objects, list(checkpoint))
            self._load_full(checkpoint, found, strict)
        for name, holder in found.stateful.items():
            holder.load_state_dict(checkpoint[name])
        own = checkpoint.pop(STATE_KEY, None)
        if own is not None:
            self._restore_own_state(own)
        return checkpoint

    def _agree_on_folder(self, path: Path, folder: bool) -> bool:
        """Rank 0's view of whether ``path`` is a sharded folder; refuse one it alone sees."""
        at_main = bool(collectives.broadcast(self.state, folder))
        everywhere = collectives.all_reduce(self.state, int(folder), "min") == 1
        if at_main and not everywhere:
            raise TrainerError(
                f"sharded checkpoint {path} is not visible on every rank; a sharded checkpoint "
                "must be on a disk all ranks read (or save it with sharded=False for one file)"
            )
        return at_main

    @staticmethod
    def _check_names(path: Path, objects: Mapping[str, Any], saved: list[str]) -> None:
        """Refuse to load entries the checkpoint does not have, naming those it has."""
        missing = [name for name in objects if name not in saved]
        if missing:
            raise TrainerError(
                f"checkpoint {path} has no {', '.join(missing)}; it holds "
                f"{', '.join(k for k in saved if k != STATE_KEY) or 'nothing'}"
            )

    @staticmethod
    def _load_full(checkpoint: Mapping[str, Any], found: entries.Entries, strict: bool) -> None:
        """Copy a one-file checkpoint's models and optimizers into the given objects."""
        for name, module in found.modules.items():
            values = strip_module_prefix(checkpoint[name])
            if is_sharded(module):
                fsdp.load_model_state(module, values, full=True, strict=strict)
            else:
                unwrap(module).load_state_dict(values, strict=strict)
        for name, (optimizer, owner) in found.optimizers.items():
            values = checkpoint[name]
            by_name = fsdp.keyed_by_name(values)
            if by_name or (owner is not None and is_sharded(owner)):
                if owner is None:
                    raise TrainerError(
                        f"optimizer {name!r} was saved by parameter name (from an FSDP model): "
                        "pass the model it trains in the same load call"
                    )
                fsdp.load_optimizer_state(owner, optimizer, values, full=True)
            else:
                optimizer.load_state_dict(values)

    def _restore_own_state(self, own: Mapping[str, Any]) -> None:
        """Put back this rank's RNG streams, loader positions and the grad scaler."""
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
            self.precision.settle()
            scaler.load_state_dict(scaler_state)
