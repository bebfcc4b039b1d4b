"""Sharded checkpoints: a folder torch.distributed.checkpoint (DCP) writes, each rank its part.

The folder holds DCP's ``.metadata`` and one ``__R_0.distcp`` per rank (the models' and
optimizers' tensors, by parameter name) plus ``handyjobs.pt``, written by rank 0 with
``torch.save``: the plain values, the state holders (schedulers) and the trainer's own state.
Every rank writes into a temporary folder next to the target, which rank 0 then renames into
place, so a reader never sees half a checkpoint. Loading goes through DCP, which reads for
each rank the pieces its shards need: a checkpoint saved by 2 processes loads into 1 or 4.

Every rank must see the same folder (a shared disk); without one, save with ``sharded=False``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from handyjobs.trainer import collectives, fsdp
from handyjobs.trainer.entries import Entries
from handyjobs.trainer.errors import TrainerError
from handyjobs.trainer.state import ProcessState

#: The file in a sharded checkpoint that holds what is not a model's or optimizer's tensor.
EXTRA_FILE = "handyjobs.pt"


def is_sharded_checkpoint(path: Path) -> bool:
    """True when ``path`` is a folder DCP wrote (it has DCP's ``.metadata``)."""
    return (path / ".metadata").is_file()


def tensor_state(entries: Entries) -> dict[str, Any]:
    """The models' and optimizers' state dicts as DCP reads and writes them (sharded)."""
    tensors: dict[str, Any] = {
        name: fsdp.model_state(module, full=False) for name, module in entries.modules.items()
    }
    for name, (optimizer, owner) in entries.optimizers.items():
        if owner is None:
            raise TrainerError(
                f"optimizer {name!r}: pass the model it trains in the same save/load call "
                "(a sharded checkpoint keys optimizer state by the model's parameter names)"
            )
        tensors[name] = fsdp.optimizer_state(owner, optimizer, full=False)
    return tensors


def save(state: ProcessState, path: Path, entries: Entries, extra: Mapping[str, Any]) -> None:
    """Write a sharded checkpoint folder at ``path``; call on every rank."""
    # Imported only here: torch's checkpoint modules cost over a second of import.
    from torch.distributed.checkpoint.filesystem import FileSystemWriter
    from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

    tensors = tensor_state(entries)
    token = collectives.broadcast(state, secrets.token_hex(6))
    staging = path.parent / f".{path.name}.{token}.tmp"
    _check_shared(state, staging)
    try:
        with one_process_is_fine():
            dcp_save(
                tensors,
                storage_writer=FileSystemWriter(staging),
                process_group=state.cpu_group() if state.distributed else None,
                no_dist=not state.distributed,
            )
        if state.is_main:
            with open(staging / EXTRA_FILE, "wb") as handle:
                torch.save(dict(extra, tensors=sorted(tensors)), handle)
                handle.flush()
                os.fsync(handle.fileno())
        state.barrier()
        if state.is_main:
            publish(staging, path)
    finally:
        if state.is_main and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    state.barrier()


@contextlib.contextmanager
def one_process_is_fine() -> Iterator[None]:
    """Hide DCP's warning that it assumes one process: that is what ``no_dist`` asks for."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _check_shared(state: ProcessState, staging: Path) -> None:
    """Make the staging folder on rank 0 and check that every rank sees it (a shared disk)."""
    if state.is_main:
        staging.mkdir(parents=True)
    state.barrier()
    seen = staging.is_dir()
    everywhere = collectives.all_reduce(state, int(seen), "min") == 1 if state.distributed else seen
    if not everywhere:
        if state.is_main:
            shutil.rmtree(staging, ignore_errors=True)
        raise TrainerError(
            f"a sharded checkpoint needs a folder every rank can see, and {staging.parent} is "
            "not shared by all ranks; save to a shared disk, or pass sharded=False for one file "
            "written by rank 0"
        )


def publish(staging: Path, path: Path) -> None:
    """Rename ``staging`` to ``path``, replacing a checkpoint (file or folder) already there."""
    if not path.exists():
        os.replace(staging, path)
        return
    # A folder cannot be renamed over a non-empty one: move the old one aside first.
    retired = path.parent / f".{path.name}.{secrets.token_hex(6)}.old"
    os.replace(path, retired)
    os.replace(staging, path)
    if retired.is_dir():
        shutil.rmtree(retired, ignore_errors=True)
    else:
        retired.unlink()


def read_extra(path: Path, weights_only: bool) -> dict[str, Any]:
    """The plain values and the trainer's state from a sharded checkpoint folder."""
    extra = torch.load(path / EXTRA_FILE, map_location="cpu", weights_only=weights_only)
    return dict(extra)


def load(state: ProcessState, path: Path, entries: Entries, strict: bool) -> None:
    """Read the models' and optimizers' tensors of a sharded checkpoint into ``entries``."""
    # Imported only here: torch's checkpoint modules cost over a second of import.
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    tensors = tensor_state(entries)
    if strict:
        _check_keys(path, entries, tensors)
    with one_process_is_fine():
        dcp_load(
            tensors,
            storage_reader=FileSystemReader(path),
            planner=DefaultLoadPlanner(allow_partial_load=not strict),
            process_group=state.cpu_group() if state.distributed else None,
            no_dist=not state.distributed,
        )
    for name, module in entries.modules.items():
        fsdp.load_model_state(module, tensors[name], full=False, strict=strict)
    for name, (optimizer, owner) in entries.optimizers.items():
        assert owner is not None  # tensor_state refused an optimizer without its model
        fsdp.load_optimizer_state(owner, optimizer, tensors[name], full=False)


def _check_keys(path: Path, entries: Entries, tensors: Mapping[str, Any]) -> None:
    """With strict loading, a model's parameters and the checkpoint's must be the same names."""
    # Imported only here: torch's checkpoint modules cost over a second of import.
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    saved = set(FileSystemReader(path).read_metadata().state_dict_metadata)
    for name in entries.modules:
        prefix = f"{name}."
        have = {key[len(prefix) :] for key in saved if key.startswith(prefix)}
        want = set(tensors[name])
        if have != want:
            missing, unexpected = sorted(want - have), sorted(have - want)
            raise TrainerError(
                f"checkpoint {path}: {name!r} does not match the model (missing "
                f"{', '.join(missing[:4]) or 'nothing'}; unexpected "
                f"{', '.join(unexpected[:4]) or 'nothing'}); pass strict=False to load what fits"
            )
