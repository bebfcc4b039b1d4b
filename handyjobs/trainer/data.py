"""Data: samplers that shard and reshuffle by themselves, resumable loaders, ``to_device``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.nn.utils.rnn import PackedSequence
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

from handyjobs.trainer import stopping
from handyjobs.trainer.state import ProcessState


class AutoEpochSampler(DistributedSampler[Any]):
    """A DistributedSampler whose epoch advances on every pass unless ``set_epoch`` is called."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """As DistributedSampler; the first pass is epoch 0."""
        super().__init__(*args, **kwargs)
        self.next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next pass (the seed's explicit style keeps working)."""
        super().set_epoch(epoch)
        self.next_epoch = epoch

    def __iter__(self) -> Iterator[Any]:
        """Shuffle with the next epoch's order, then count the pass."""
        self.epoch = self.next_epoch
        self.next_epoch += 1
        return super().__iter__()


class Loaders:
    """The loaders and samplers one trainer made, in creation order, for save and resume."""

    def __init__(self, state: ProcessState) -> None:
        """No loaders yet; ``seed`` is set by ``seed_everything``."""
        self.state = state
        self.seed: int | None = None
        self._samplers: list[AutoEpochSampler] = []
        self._generators: list[torch.Generator] = []
        self._pending_samplers: list[Mapping[str, Any]] = []
        self._pending_generators: list[torch.Tensor] = []
        self._seed_samplers: list[tuple[Any, AutoEpochSampler]] = []

    def make_sampler(
        self, dataset: Dataset[Any], shuffle: bool, drop_last: bool, seed: int | None
    ) -> AutoEpochSampler:
        """A sharding sampler (one shard in one process) registered for save/load."""
        if seed is None:
            seed = self.seed if self.seed is not None else 0
        sampler = AutoEpochSampler(
            dataset,
            num_replicas=self.state.world_size,
            rank=self.state.rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self._samplers.append(sampler)
        index = len(self._samplers) - 1
        if index < len(self._pending_samplers):
            # load() ran before this loader existed: give it the epoch it had when saved.
            sampler.next_epoch = int(self._pending_samplers[index]["epoch"])
        return sampler

    def loader(
        self,
        dataset: Dataset[Any],
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        num_workers: int = 0,
        seed: int | None = None,
        **kwargs: Any,
    ) -> DataLoader[Any]:
        """A DataLoader giving this process ``batch_size`` samples a step from its own shard."""
        kwargs.setdefault("pin_memory", self.state.device.type == "cuda")
        if "generator" not in kwargs:
            # The DataLoader draws its workers' base seed from this generator; mixing in the
            # rank makes augmentation in workers differ across ranks after seed_everything.
            base = self.seed if self.seed is not None else torch.initial_seed()
            generator = torch.Generator()
            generator.manual_seed((base * 1_000_003 + self.state.rank) % 2**63)
            kwargs["generator"] = generator
            self._generators.append(generator)
            index = len(self._generators) - 1
            if index < len(self._pending_generators):
                generator.set_state(self._pending_generators[index])
        if num_workers > 0 and stopping.listener.signals:
            kwargs["worker_init_fn"] = stopping.IgnoreFirstStop(
                stopping.listener.signals, kwargs.get("worker_init_fn")
            )
        if isinstance(dataset, IterableDataset):
            # No sampler can shard an iterable dataset; the dataset must shard itself by rank.
            return DataLoader(dataset, batch_size, num_workers=num_workers, **kwargs)
        sampler = self.make_sampler(dataset, shuffle=shuffle, drop_last=drop_last, seed=seed)
        return DataLoader(
            dataset,
            batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=num_workers,
            **kwargs,
        )

    def dataset_parallel(self, dataset: Dataset[Any]) -> DistributedSampler[Any] | None:
        """A shuffling DistributedSampler under DDP, None in one process (seed API)."""
        if not self.state.synch:
            return None
        return self.make_sampler(dataset, shuffle=True, drop_last=False, seed=None)

    def get_loader(
        self,
        dataset: Dataset[Any],
        epoch: int,
        bsz: int,
        num_workers: int,
        train_sampler: DistributedSampler[Any] | None = None,
    ) -> DataLoader[Any]:
        """A shuffled DataLoader for ``epoch``; under DDP each rank reads its shard (seed API)."""
        if not self.state.synch and train_sampler is None:
            return DataLoader(dataset, bsz, num_workers=num_workers, shuffle=True, drop_last=False)
        if train_sampler is None:
            # The seed crashed here; keep one sampler per dataset so epochs keep counting.
            train_sampler = self._seed_sampler(dataset)
        train_sampler.set_epoch(epoch)
        return DataLoader(
            dataset,
            bsz,
            pin_memory=self.state.device.type == "cuda",
            num_workers=num_workers,
            sampler=train_sampler,
        )

    def _seed_sampler(self, dataset: Dataset[Any]) -> AutoEpochSampler:
        """The sampler get_loader made earlier for this dataset, or a new one."""
        for known, sampler in self._seed_samplers:
            if known is dataset:
                return sampler
        sampler = self.make_sampler(dataset, shuffle=True, drop_last=False, seed=None)
        self._seed_samplers.append((dataset, sampler))
        return sampler

    def state_dict(self) -> dict[str, Any]:
        """Each sampler's next epoch and each loader generator's state, in creation order."""
        return {
            "samplers": [{"epoch": s.next_epoch} for s in self._samplers],
            "generators": [g.get_state() for g in self._generators],
        }

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        """Restore loaders made so far; keep the rest for loaders made after this call."""
        self._pending_samplers = list(saved.get("samplers", []))
        self._pending_generators = list(saved.get("generators", []))
        for sampler, old in zip(self._samplers, self._pending_samplers, strict=False):
            sampler.next_epoch = int(old["epoch"])
        for generator, gstate in zip(self._generators, self._pending_generators, strict=False):
            generator.set_state(gstate)


def to_device(data: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move tensors, also inside nested dicts, lists and tuples, to ``device``.

    A PackedSequence moves through its own ``.to``, which keeps ``batch_sizes`` on the CPU
    where the RNN kernels need it. Other objects pass through unchanged.
    """
    if isinstance(data, torch.Tensor):
        return data.to(device, non_blocking=non_blocking)
    if isinstance(data, PackedSequence):
        # torch's annotation of PackedSequence.to copies only Tensor.to's (dtype) overload.
        return data.to(device, non_blocking=non_blocking)  # type: ignore[arg-type]
    if isinstance(data, Mapping):
        items = {k: to_device(v, device, non_blocking) for k, v in data.items()}
        try:
            return type(data)(items)  # type: ignore[call-arg]
        except TypeError:
            return items
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(to_device(v, device, non_blocking) for v in data))
    if isinstance(data, (list, tuple)):
        return type(data)(to_device(v, device, non_blocking) for v in data)
    return data
