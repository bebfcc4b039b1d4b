"""Collectives over a ProcessState: all_reduce, gather, broadcast, and bytes in CPU chunks.

Each is a no-op (returning the value in the shape a world of one would) when the process is
not distributed, so training code calls them unconditionally. Tensors travel on the default
group's device (the GPU under nccl); Python objects and raw bytes travel through the state's
CPU group (gloo), so a checkpoint sent to another node is never staged in GPU memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from handyjobs.trainer.errors import TrainerError
from handyjobs.trainer.state import ProcessState

T = TypeVar("T")

REDUCE_OPS = ("mean", "sum", "max", "min")

#: Bytes per broadcast when a file is sent from rank 0: bounded messages (gloo handles huge
#: ones poorly) and one chunk-sized buffer on the wire at a time.
CHUNK_BYTES = 64 * 1024 * 1024

_DIST_OPS = {
    "mean": dist.ReduceOp.SUM,
    "sum": dist.ReduceOp.SUM,
    "max": dist.ReduceOp.MAX,
    "min": dist.ReduceOp.MIN,
}


def all_reduce(state: ProcessState, value: T, op: str = "mean") -> T:
    """Reduce a tensor or a number over all processes: 'mean', 'sum', 'max' or 'min'."""
    if op not in REDUCE_OPS:
        raise TrainerError(f"all_reduce op={op!r}; use one of {', '.join(REDUCE_OPS)}")
    state.check_open()
    if isinstance(value, torch.Tensor):
        tensor = value.detach().clone()
        if op == "mean" and not (tensor.is_floating_point() or tensor.is_complex()):
            tensor = tensor.double()
        return _all_reduce_tensor(state, tensor, op).to(value.device)  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TrainerError(
            f"all_reduce takes a tensor or a number, not {type(value).__name__}; "
            "use gather() for other objects"
        )
    is_int = isinstance(value, int) and op != "mean"
    tensor = torch.tensor(value, dtype=torch.int64 if is_int else torch.float64)
    result = _all_reduce_tensor(state, tensor, op).item()
    return int(result) if is_int else float(result)  # type: ignore[return-value]


def _all_reduce_tensor(state: ProcessState, tensor: torch.Tensor, op: str) -> torch.Tensor:
    """All-reduce a private tensor; mean is sum / world size (gloo has no AVG)."""
    if not state.distributed:
        return tensor
    comm = tensor.to(state.comm_device())
    dist.all_reduce(comm, op=_DIST_OPS[op])
    if op == "mean":
        comm = comm / state.world_size
    return comm


def any_rank(state: ProcessState, flag: bool) -> bool:
    """True on every rank when ``flag`` is True on any rank (one all-reduce on the CPU group)."""
    if not state.distributed:
        return flag
    group = state.cpu_group()
    tensor = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=group)
    return bool(tensor.item())


def gather(state: ProcessState, value: Any) -> Any:
    """Every process's value on every process: tensors concatenated on dim 0, else a list."""
    state.check_open()
    if isinstance(value, torch.Tensor):
        return _gather_tensor(state, value)
    if not state.distributed:
        return [value]
    gathered: list[Any] = [None] * state.world_size
    dist.all_gather_object(gathered, value, group=state.cpu_group())
    return gathered


def _gather_tensor(state: ProcessState, tensor: torch.Tensor) -> torch.Tensor:
    """All-gather tensors whose first dimension may differ (a short last batch)."""
    local = tensor.detach()
    if local.dim() == 0:
        local = local.unsqueeze(0)
    if not state.distributed:
        return local.clone()
    comm_device = state.comm_device()
    comm = local.to(comm_device)
    size = torch.tensor([comm.shape[0]], dtype=torch.int64, device=comm_device)
    sizes = [torch.zeros_like(size) for _ in range(state.world_size)]
    dist.all_gather(sizes, size)
    lengths = [int(s.item()) for s in sizes]
    longest = max(lengths)
    if comm.shape[0] < longest:
        pad = comm.new_zeros((longest - comm.shape[0], *comm.shape[1:]))
        comm = torch.cat([comm, pad])
    parts = [torch.empty_like(comm) for _ in range(state.world_size)]
    dist.all_gather(parts, comm.contiguous())
    out = torch.cat([part[:n] for part, n in zip(parts, lengths, strict=True)])
    return out.to(tensor.device)


def drop_padding(value: Any, cuts: Sequence[tuple[int, int]]) -> Any:
    """``value`` without the padding rows at its end: ``(rows, padded)`` pairs say how many.

    A tensor (or a list of per-sample objects) whose first dimension is one of the ``rows``
    loses its last ``padded`` entries; dicts, lists and tuples of tensors are walked; anything
    else is left alone.
    """
    if isinstance(value, torch.Tensor):
        if value.dim() > 0:
            for rows, padded in cuts:
                if value.shape[0] == rows:
                    return value[: rows - padded]
        return value
    if isinstance(value, Mapping):
        return {key: drop_padding(item, cuts) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        if any(isinstance(item, (torch.Tensor, Mapping)) for item in value):
            return type(value)(drop_padding(item, cuts) for item in value)
        for rows, padded in cuts:
            if len(value) == rows:
                return value[: rows - padded]
    return value


def gather_for_metrics(
    state: ProcessState, value: Any, cuts: Sequence[tuple[int, int]] = ()
) -> Any:
    """Every rank's ``value`` without padding duplicates: tensors concatenated, lists joined."""
    return _gather_nested(state, drop_padding(value, cuts))


def _gather_nested(state: ProcessState, value: Any) -> Any:
    """Gather tensors inside dicts, lists and tuples; lists of other objects come back joined."""
    if isinstance(value, torch.Tensor):
        return gather(state, value)
    if isinstance(value, Mapping):
        return {key: _gather_nested(state, item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        if any(isinstance(item, (torch.Tensor, Mapping)) for item in value):
            return type(value)(_gather_nested(state, item) for item in value)
        return [item for part in gather(state, list(value)) for item in part]
    return gather(state, value)


def broadcast(state: ProcessState, value: T, src: int = 0) -> T:
    """``value`` from rank ``src`` on every process (tensors need the same shape everywhere)."""
    state.check_open()
    if not state.distributed:
        return value
    if isinstance(value, torch.Tensor):
        comm = value.detach().clone().to(state.comm_device())
        dist.broadcast(comm, src=src)
        return comm.to(value.device)  # type: ignore[return-value]
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=src, group=state.cpu_group())
    return box[0]  # type: ignore[no-any-return]


def broadcast_bytes(
    state: ProcessState,
    blob: bytes | None,
    src: int = 0,
    chunk_bytes: int = CHUNK_BYTES,
    group: Any = None,
) -> bytes | bytearray:
    """Rank ``src``'s bytes on every rank, sent in chunks of CPU tensors over the CPU group.

    ``blob`` is read on ``src`` only. Receivers write straight into the buffer they return, so
    each process holds the payload once (plus, on ``src``, one copy to make it writable).
    """
    state.check_open()
    if not state.distributed:
        if blob is None:
            raise TrainerError("broadcast_bytes: the source rank has no bytes to send")
        return blob
    if group is None:
        group = state.cpu_group()
    sending = state.rank == src
    if sending and blob is None:
        raise TrainerError("broadcast_bytes: the source rank has no bytes to send")
    size = torch.tensor([len(blob) if sending and blob is not None else 0], dtype=torch.int64)
    dist.broadcast(size, src=src, group=group)
    total = int(size.item())
    buffer = bytearray(blob) if sending and blob is not None else bytearray(total)
    if total:
        flat = torch.frombuffer(buffer, dtype=torch.uint8)
        for start in range(0, total, chunk_bytes):
            dist.broadcast(flat[start : start + chunk_bytes], src=src, group=group)
    return blob if sending and blob is not None else buffer
