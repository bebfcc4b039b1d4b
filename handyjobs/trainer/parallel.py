"""ParallelTrainer: the facade over process state, collectives, data, precision and checkpoints.

It keeps TorchHandy's ``Parallel_Trainer(synch, config)`` API and adds the vocabulary users
know from Accelerate and Lightning Fabric; each call is a line or two into the module that
owns the concern (see the package docstring).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from handyjobs import metrics
from handyjobs import progress as progress_output
from handyjobs.trainer import collectives, fsdp, models, stopping
from handyjobs.trainer.checkpoint import Checkpoints
from handyjobs.trainer.data import Loaders
from handyjobs.trainer.errors import TrainerError
from handyjobs.trainer.facets import CheckpointFacet, Communication, DataFacet, StepFacet
from handyjobs.trainer.precision import Precision, resolve_precision
from handyjobs.trainer.settings import config_value
from handyjobs.trainer.state import ProcessState, clean_exit

T = TypeVar("T")

#: What ``strategy`` may be: DistributedDataParallel, or FSDP2's ``fully_shard``.
STRATEGIES = ("ddp", "fsdp")


def resolve_strategy(strategy: str | None, config: Any) -> str:
    """The strategy argument, else config.strategy, else 'ddp'; checked."""
    chosen = str(strategy or config_value(config, "strategy", "ddp")).lower()
    if chosen not in STRATEGIES:
        raise TrainerError(f"strategy={chosen!r}; use 'ddp' (the default) or 'fsdp'")
    return chosen


class ParallelTrainer(Communication, DataFacet, StepFacet, CheckpointFacet):
    """Rank, device and DDP or FSDP for one training script that runs on CPU, one GPU, or many."""

    def __init__(
        self, synch: bool | None = None, config: Any = None, *, strategy: str | None = None
    ) -> None:
        """Read torchrun's environment, pick the device and start the process group if needed.

        ``strategy`` (or config.strategy) is 'ddp' (default) or 'fsdp': ``model_parallel``
        then shards the model with FSDP2's ``fully_shard`` instead of wrapping it in DDP.
        """
        self.config = config
        self.strategy = resolve_strategy(strategy, config)
        stop_signals = stopping.parse_signals(config_value(config, "stop_signals"))
        precision = resolve_precision(config)
        self.state = ProcessState(synch, config)
        self._loaders = Loaders(self.state)
        self._precision = Precision(
            precision,
            self.state.device,
            sharded=self.strategy == "fsdp" and self.state.synch,
            batches_left=self._loaders.batches_left,
        )
        self._checkpoints = Checkpoints(self.state, self._loaders, self._precision)
        self._stop_agreed = False
        label = f"rank {self.state.rank} " if self.state.synch else ""
        stopping.listener.acquire(stop_signals, label)
        self._listening = True
        seed = config_value(config, "seed")
        if seed is not None:
            self.seed_everything(int(seed))

    # -- who and where -----------------------------------------------------------------------

    @property
    def synch(self) -> bool:
        """Whether this process takes part in DDP (see the launch table in the README)."""
        return self.state.synch

    @property
    def backend(self) -> str | None:
        """The process group's backend (nccl, gloo), or None in one process."""
        return self.state.backend

    @property
    def rank(self) -> int:
        """Global rank of this process (0 when not distributed)."""
        return self.state.rank

    @property
    def local_rank(self) -> int:
        """Rank of this process on its node."""
        return self.state.local_rank

    @property
    def world_size(self) -> int:
        """Number of processes in the job, over all nodes."""
        return self.state.world_size

    @property
    def local_world_size(self) -> int:
        """Number of processes on this node."""
        return self.state.local_world_size

    @property
    def node_rank(self) -> int:
        """Index of this node (torchrun's GROUP_RANK)."""
        return self.state.node_rank

    @property
    def is_main(self) -> bool:
        """True on global rank 0 only: the one process that saves, logs and prints."""
        return self.state.is_main

    @property
    def is_local_main(self) -> bool:
        """True on local rank 0 of each node (for per-node work such as a download)."""
        return self.state.is_local_main

    @property
    def device(self) -> torch.device:
        """The device this process trains on."""
        return self.state.device

    @property
    def distributed(self) -> bool:
        """True when a process group is in use (DDP)."""
        return self.state.distributed

    def __repr__(self) -> str:
        """Show rank, world size, device and backend."""
        return (
            f"ParallelTrainer(rank={self.rank}, world_size={self.world_size}, "
            f"device={self.device}, backend={self.backend}, precision={self.precision})"
        )

    # -- seed API (TorchHandy's Parallel_Trainer, same signatures) --------------------------------

    def get_device(self) -> torch.device:
        """The device to put models and data on (seed API)."""
        return self.state.device

    def model_parallel(self, model: nn.Module, **options: Any) -> nn.Module:
        """Move ``model`` to the device; wrap it in DDP (or shard it with FSDP2) when distributed.

        ``options`` apply to this model only: DDP's keyword arguments under 'ddp'
        (``find_unused_parameters=True``); under 'fsdp', ``policy`` (module classes, or a
        function of a module, naming the blocks to shard; default config.fsdp_policy, ignored
        under 'ddp') and ``fully_shard``'s keyword arguments. A model already sharded by hand
        is left as it is. Under 'fsdp' make the optimizer after this call: its parameters
        become sharded.
        """
        # Popped under DDP too, so that one script runs under either strategy.
        policy = options.pop("policy", config_value(self.config, "fsdp_policy"))
        if self.strategy == "fsdp":
            return fsdp.shard(model, self.state, self._precision.name, policy, **options)
        return models.wrap(model, self.state, **options)

    def dataset_parallel(self, dataset: Dataset[Any]) -> DistributedSampler[Any] | None:
        """A shuffling DistributedSampler under DDP, None in one process (seed API)."""
        return self._loaders.dataset_parallel(dataset)

    def get_loader(
        self,
        dataset: Dataset[Any],
        epoch: int,
        bsz: int,
        num_workers: int,
        train_sampler: DistributedSampler[Any] | None = None,
    ) -> DataLoader[Any]:
        """A shuffled DataLoader for ``epoch``; under DDP each rank reads its shard (seed API)."""
        return self._loaders.get_loader(dataset, epoch, bsz, num_workers, train_sampler)

    def save_model(
        self, ckpt: Mapping[str, Any], model: nn.Module, path: str | os.PathLike[str]
    ) -> None:
        """Save ``{**ckpt, 'state_dict': ...}`` atomically on global rank 0, then wait for it."""
        self._checkpoints.save_model(ckpt, model, path)

    def write_log(self, log_file: IO[str] | str | os.PathLike[str], content: str) -> None:
        """Append a line to an open file or a path, on global rank 0 only (seed API)."""
        if not self.is_main:
            return
        if isinstance(log_file, (str, os.PathLike)):
            with open(log_file, "a", encoding="utf-8") as handle:
                handle.write(content + "\n")
            return
        log_file.write(content + "\n")
        log_file.flush()

    def call_func(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Call ``func`` on global rank 0 only and return its result there (None elsewhere)."""
        if not self.is_main:
            return None
        return func(*args, **kwargs)

    def get_model(self, model: nn.Module) -> nn.Module:
        """The user's module inside the DDP (or torch.compile) wrapper."""
        return models.unwrap(model)

    # -- stopping ----------------------------------------------------------------------------

    @property
    def should_stop(self) -> bool:
        """True once the job was asked to stop (SIGTERM, SIGUSR1) on any rank.

        Under DDP reading it is a collective (one tiny all-reduce on the CPU): read it on every
        rank at the same point of the loop, like ``barrier``, and every rank gets the same
        answer, so they all leave the loop at the same step. Once True it stays True without
        communicating. Reading it also arms the handlers: before the first read a stop signal
        takes its default action (SIGTERM ends the process at once).
        """
        local = stopping.listener.read()
        if self._stop_agreed:
            return True
        agreed = collectives.any_rank(self.state, local) if self.distributed else local
        self._stop_agreed = agreed
        if agreed:
            stopping.note_stopped_early(stopping.listener.requested)
        return agreed

    @property
    def stop_requested(self) -> bool:
        """Whether *this* process was asked to stop; no communication, so ranks may differ."""
        return stopping.listener.read()

    def request_stop(self) -> None:
        """Ask for a stop from code (a time budget, a diverged loss), as a stop signal would."""
        stopping.listener.request()

    # -- output ------------------------------------------------------------------------------

    def progress(
        self,
        iterable: Iterable[T],
        desc: str = "",
        total: int | None = None,
        interval: float = 30.0,
    ) -> Iterator[T]:
        """Iterate with a rich bar on rank 0 (plain lines when not a TTY); silent elsewhere.

        Under handyjobs the bar redraws at most once a second, and when
        ``HANDYJOBS_PROGRESS_FILE`` is set rank 0 also reports there for live views.
        """
        if not self.is_main:
            return iter(iterable)
        return progress_output.track(iterable, desc, total, interval)

    def log_metrics(
        self,
        values: Mapping[str, Any],
        step: int | None = None,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        """Append ``values`` as a JSON line on global rank 0 (handyjobs.metrics); no-op elsewhere.

        Tensors are read with ``.item()`` (a GPU tensor waits for the GPU). The values are
        this rank's own: ``all_reduce`` them first (on every rank) for a mean over ranks.
        """
        if not self.is_main:
            return
        plain = {
            name: value.item() if isinstance(value, torch.Tensor) else value
            for name, value in values.items()
        }
        metrics.log_metrics(plain, step=step, path=path)

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Wait briefly for the other ranks, then destroy the process group (safe to repeat)."""
        self._release_signals()
        self.state.close()

    def _release_signals(self) -> None:
        """Give the stop handlers back (the last trainer of the process restores the old ones)."""
        if self._listening:
            self._listening = False
            stopping.listener.release()

    def __enter__(self) -> ParallelTrainer:
        """Use the trainer in a ``with`` block that closes it."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        """Close on leaving the block; after an error, without waiting for the other ranks."""
        self._release_signals()
        self.state.shutdown(wait=clean_exit(exc_type, exc))


#: The seed's name (TorchHandy's ``Parallel_Trainer``), kept so its scripts run unchanged.
Parallel_Trainer = ParallelTrainer
