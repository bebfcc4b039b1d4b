"""The facade's facets: communication, data, the training step, checkpoints.

``ParallelTrainer`` inherits each one; a facet holds no state of its own and each call is a
line or two into the module that owns the concern. They are split only to keep each class
readable; users see one ``ParallelTrainer``.
"""

from __future__ import annotations

import builtins
import contextlib
import os
from collections.abc import Iterable
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from handyjobs.trainer import collectives, rng
from handyjobs.trainer.checkpoint import Checkpoints
from handyjobs.trainer.data import Loaders
from handyjobs.trainer.data import to_device as move_to_device
from handyjobs.trainer.precision import Precision
from handyjobs.trainer.state import ProcessState

T = TypeVar("T")


class _Parts:
    """The parts the facets reach (made by ``ParallelTrainer.__init__``)."""

    state: ProcessState
    config: Any
    strategy: str
    _loaders: Loaders
    _precision: Precision
    _checkpoints: Checkpoints


class Communication(_Parts):
    """Collectives and rank-0 output; each is a no-op (or the identity) in one process."""

    def barrier(self) -> None:
        """Wait until every process gets here (no-op in one process)."""
        self.state.barrier()

    def main_process_first(self, local: bool = False) -> contextlib.AbstractContextManager[None]:
        """Run the block on rank 0 (per node if ``local``) first, then on the others."""
        return self.state.main_process_first(local)

    def all_reduce(self, value: T, op: str = "mean") -> T:
        """Reduce a tensor or a number over all processes: 'mean', 'sum', 'max' or 'min'.

        For metrics over a data set whose size the ranks do not divide, a sum of per-rank
        counts includes the few samples the sampler repeats to even the shards; reduce what
        ``gather_for_metrics`` returns instead (or use ``drop_last``).
        """
        return collectives.all_reduce(self.state, value, op)

    def gather(self, value: Any) -> Any:
        """Every process's value on every process: tensors concatenated on dim 0, else a list."""
        return collectives.gather(self.state, value)

    def gather_for_metrics(self, value: Any) -> Any:
        """``gather`` without the padding duplicates of the trainer's loader's last batch.

        The sampler repeats a few samples so every rank gets as many (1001 samples on 2
        ranks: 1002). Each rank drops its duplicates from a tensor (or a list of per-sample
        items) whose first dimension is the last batch's size, or the whole pass's so far
        (predictions concatenated over the pass); dicts, lists and tuples of tensors are
        walked. Then tensors are concatenated in rank order, lists joined.
        """
        info = self._loaders.last_batch()
        cuts = []
        if info is not None:
            if info.padded > 0:
                cuts.append((info.rows, info.padded))
            if info.pass_padded > 0:
                cuts.append((info.pass_rows, info.pass_padded))
        return collectives.gather_for_metrics(self.state, value, cuts)

    def broadcast(self, value: T, src: int = 0) -> T:
        """``value`` from rank ``src`` on every process (tensors need the same shape everywhere)."""
        return collectives.broadcast(self.state, value, src)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on global rank 0 only, flushed so logs show it at once."""
        if self.state.is_main:
            kwargs.setdefault("flush", True)
            builtins.print(*args, **kwargs)


class DataFacet(_Parts):
    """Loaders over each rank's shard, and moving batches to the device."""

    def loader(
        self,
        dataset: Dataset[Any],
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        num_workers: int = 0,
        seed: int | None = None,
        shard: bool = True,
        **kwargs: Any,
    ) -> DataLoader[Any]:
        """A DataLoader giving this process ``batch_size`` samples a step from its own shard.

        The shard's order changes on every pass (no ``set_epoch`` needed) and is the same on
        every rank for a given seed; DataLoader workers get seeds that differ across ranks.
        Its position (epoch and batch) is saved by ``save``: after ``load`` the next pass
        starts at the first batch not yet handed out, without loading the ones before it.
        An ``IterableDataset`` is split by rank (item ``rank``, ``rank + world``, ...);
        ``shard=False`` gives every rank all of the data (for one that shards itself).
        """
        return self._loaders.loader(
            dataset, batch_size, shuffle, drop_last, num_workers, seed, shard, **kwargs
        )

    def to_device(self, data: T, non_blocking: bool = True) -> T:
        """Move tensors, also inside nested dicts, lists and tuples, to this process's device."""
        # Asynchronous copies only from pinned CPU memory to a GPU; elsewhere they buy nothing.
        device = self.state.device
        asynchronous = non_blocking and device.type == "cuda"
        return move_to_device(data, device, asynchronous)  # type: ignore[no-any-return]


class StepFacet(_Parts):
    """The training step: autocast, backward, accumulation, clipping, the optimizer step."""

    @property
    def precision(self) -> str:
        """'32', 'bf16' or 'fp16', from config.precision."""
        return self._precision.name

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The fp16 grad scaler (None for '32' and 'bf16')."""
        return self._precision.scaler

    @property
    def sync_gradients(self) -> bool:
        """False inside ``accumulate`` on a micro-step that does not all-reduce gradients."""
        return self._precision.sync_gradients

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision for the forward pass as config.precision says (a no-op for '32')."""
        return self._precision.autocast()

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """``loss.backward()``, scaled for fp16 and divided by the steps of ``accumulate``."""
        self._precision.backward(loss, **kwargs)

    def accumulate(self, model: nn.Module, steps: int) -> contextlib.AbstractContextManager[bool]:
        """Accumulate gradients over ``steps`` micro-steps; yields True on the one that syncs.

        Put the forward pass and ``backward`` inside the block; DDP (or FSDP) reduces
        gradients only on the final micro-step. Step the optimizer after the block when it
        yielded True. A window closes at the end of a pass of the trainer's loader, even when
        it is short, and its losses are divided by its own length.
        """
        return self._precision.accumulate(model, steps)

    def clip_grad_norm(
        self,
        model: nn.Module | Iterable[torch.Tensor],
        max_norm: float,
        norm_type: float = 2.0,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> torch.Tensor:
        """Clip gradients to ``max_norm`` and return their total norm (unscaled first for fp16)."""
        return self._precision.clip_grad_norm(model, max_norm, norm_type, optimizer)

    def step(self, optimizer: torch.optim.Optimizer, zero_grad: bool = True) -> bool:
        """``optimizer.step()`` (through the grad scaler for fp16), then zero the gradients.

        Returns whether the optimizer stepped: False when the fp16 scaler skipped the step
        (inf or NaN gradients), so a scheduler can skip too. With several optimizers, step
        each; the fp16 scale is updated once, at the next ``backward``.
        """
        return self._precision.step(optimizer, zero_grad)


class CheckpointFacet(_Parts):
    """Checkpoints and seeds: everything a resumed run needs to continue exactly."""

    def save(
        self, path: str | os.PathLike[str], *, sharded: bool | None = None, **state: Any
    ) -> None:
        """Save models, optimizers, schedulers, values, RNG and loader state; call on all ranks.

        Modules are saved without their DDP wrapper (no ``module.`` prefix). One file by
        default: global rank 0 writes it through a temp file and a rename; everyone waits
        until it is in place. FSDP models go to a sharded folder (each rank writes its part;
        loads into any number of processes); ``sharded=False`` gathers them into one file
        instead (for export), ``sharded=True`` asks for a folder for any model. A value that
        ``load`` could not read back (an argparse Namespace, a numpy scalar) is refused.
        """
        self._checkpoints.save(path, sharded, **state)

    def load(
        self,
        path: str | os.PathLike[str],
        *,
        strict: bool = True,
        weights_only: bool = True,
        **state: Any,
    ) -> dict[str, Any]:
        """Restore what ``save`` wrote into the given objects; return every saved value.

        Everything is read to the CPU first, then copied into the objects on their devices.
        RNG and loader state are restored too, so training continues exactly where it stopped,
        mid-epoch included. ``strict=False`` loads the model weights that fit;
        ``weights_only=False`` reads arbitrary pickled objects (only from files you trust).
        """
        return self._checkpoints.load(path, strict, weights_only, **state)

    def seed_everything(self, seed: int) -> int:
        """Seed torch alike on every rank (same model init) and python/numpy per rank.

        Loaders made afterwards shuffle with this seed and give their DataLoader workers
        seeds that differ across ranks, so random augmentation differs from rank to rank.
        """
        self._loaders.seed = int(seed)
        rng.seed_everything(int(seed), self.state.rank)
        return int(seed)
