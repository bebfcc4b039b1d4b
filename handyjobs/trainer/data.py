"""Data: loaders whose position is state (epoch and batch), the last batch handed out, to_device.

A loader from ``trainer.loader`` counts the batches it hands out. ``save`` records, for each
loader, the epoch of the pass under way and how many of this rank's samples it has handed out;
after ``load`` the next pass starts at the first unseen batch through the sampler, so the
skipped samples are never loaded. The counts also say how many rows of the last batch are
padding (``gather_for_metrics``) and how many batches the pass has left (``accumulate`` closes
its window at the end of a pass).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.utils.rnn import PackedSequence
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

from handyjobs.trainer import stopping
from handyjobs.trainer.sampler import RankShard, ResumableSampler
from handyjobs.trainer.state import ProcessState

#: The sampler's former name, for code that imported it.
AutoEpochSampler = ResumableSampler


@dataclass
class BatchInfo:
    """What the batch a loader handed out last held on this rank, and what its pass has left."""

    rows: int  # rows of that batch (-1: unknown, for an iterable dataset)
    padded: int  # of them, padding duplicates at its end
    pass_rows: int  # rows handed out in the pass so far
    pass_padded: int
    remaining: int | None  # batches the pass has after this one (None: unknown)
    finished: bool = False  # the pass has ended


class Tracker:
    """One loader's position: the pass under way, or where the next pass starts."""

    def __init__(
        self,
        owner: Loaders,
        sampler: ResumableSampler | None,
        generator: torch.Generator | None,
        batch_size: int,
        drop_last: bool,
    ) -> None:
        """Bind to the loader's sampler (None for an iterable dataset) and worker-seed generator."""
        self.owner = owner
        self.sampler = sampler
        self.generator = generator
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.running = False
        self.epoch = 0
        self.start = 0  # samples of the shard skipped at the start of the pass under way
        self.handed = 0  # batches handed out in the pass under way
        self.total: int | None = None  # batches in that pass, when known
        self.generator_at_start: torch.Tensor | None = None
        self.pass_id = 0
        # An iterable dataset has no sampler: its next pass is kept here.
        self.next_epoch = 0
        self.next_start = 0
        self.info: BatchInfo | None = None

    def batches(
        self, make_iterator: Callable[[], Iterator[Any]], length: int | None
    ) -> Iterator[Any]:
        """Run one pass of the loader, counting what it hands out."""
        # Before the DataLoader's iterator exists: it draws its workers' base seed from the
        # generator, and a resumed pass must draw the same one.
        generator_state = self.generator.get_state() if self.generator is not None else None
        self._begin(generator_state, length)
        pass_id = self.pass_id
        inner = make_iterator()
        if self.sampler is None:
            # An iterable cannot seek: the batches already seen are read and dropped.
            for _ in range(self.start // self.batch_size):
                if next(inner, None) is None:
                    break
        for batch in inner:
            if pass_id == self.pass_id:
                self._hand_out()
            yield batch
        if pass_id == self.pass_id:
            self.running = False
            if self.info is not None:
                self.info.finished = True

    def _begin(self, generator_state: torch.Tensor | None, length: int | None) -> None:
        """Start counting a pass from the position the sampler (or this tracker) holds."""
        self.pass_id += 1
        self.running = True
        self.handed = 0
        self.generator_at_start = generator_state
        if self.sampler is not None:
            self.epoch = self.sampler.next_epoch
            self.start = min(self.sampler.next_start, self.sampler.num_samples)
            left = self.sampler.num_samples - self.start
            self.total = left // self.batch_size if self.drop_last else -(-left // self.batch_size)
        else:
            self.epoch, self.start = self.next_epoch, self.next_start
            self.next_epoch, self.next_start = self.next_epoch + 1, 0
            self.handed = self.start // self.batch_size
            self.total = length
        self.info = None

    def _hand_out(self) -> None:
        """Count one batch and note its rows and padding."""
        self.handed += 1
        previous = self.info or BatchInfo(0, 0, 0, 0, None)
        remaining = None if self.total is None else max(self.total - self.handed, 0)
        rows = padded = -1
        if self.sampler is not None:
            low = self.start + (self.handed - 1) * self.batch_size
            high = min(low + self.batch_size, self.sampler.num_samples)
            rows = high - low
            padded = max(0, high - max(low, self.sampler.real_samples))
        self.info = BatchInfo(
            rows=rows,
            padded=max(padded, 0),
            pass_rows=previous.pass_rows + max(rows, 0),
            pass_padded=previous.pass_padded + max(padded, 0),
            remaining=remaining,
        )
        self.owner.active = self

    def position(self) -> dict[str, int]:
        """The pass to resume: its epoch and the samples of this rank's shard already handed out."""
        if self.running:
            # An iterable's count includes the batches it skipped by reading; a sampler's
            # pass began at ``start``.
            done = self.handed * self.batch_size + (self.start if self.sampler else 0)
            return {"epoch": self.epoch, "start": done}
        if self.sampler is not None:
            return {"epoch": self.sampler.next_epoch, "start": self.sampler.next_start}
        return {"epoch": self.next_epoch, "start": self.next_start}

    def generator_state(self) -> torch.Tensor | None:
        """The worker-seed generator's state for the pass to resume."""
        if self.generator is None:
            return None
        if self.running and self.generator_at_start is not None:
            return self.generator_at_start
        return self.generator.get_state()

    def seek(self, position: Mapping[str, Any]) -> None:
        """Make the next pass the saved one, from its first unseen sample."""
        epoch, start = int(position.get("epoch", 0)), int(position.get("start", 0))
        self.running = False
        self.pass_id += 1
        self.info = None
        if self.sampler is not None:
            self.sampler.seek(epoch, start)
        else:
            self.next_epoch, self.next_start = epoch, start


class ResumableLoader(DataLoader[Any]):
    """A DataLoader that reports each batch it hands out to its tracker."""

    tracker: Tracker

    # A generator instead of torch's _BaseDataLoaderIter: callers only iterate it.
    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        """Batches of one pass, counted."""
        try:
            length: int | None = len(self)
        except TypeError:
            length = None
        return self.tracker.batches(super().__iter__, length)


class Loaders:
    """The loaders and samplers one trainer made, in creation order, for save and resume."""

    def __init__(self, state: ProcessState) -> None:
        """No loaders yet; ``seed`` is set by ``seed_everything``."""
        self.state = state
        self.seed: int | None = None
        self.active: Tracker | None = None
        self._samplers: list[ResumableSampler] = []
        self._generators: list[torch.Generator] = []
        self._trackers: list[Tracker] = []
        self._pending: dict[str, list[Any]] = {"samplers": [], "generators": [], "iterables": []}
        self._seed_samplers: list[tuple[Any, ResumableSampler]] = []

    def make_sampler(
        self,
        dataset: Dataset[Any],
        shuffle: bool,
        drop_last: bool,
        seed: int | None,
        shard: bool = True,
    ) -> ResumableSampler:
        """A sharding sampler (one shard in one process) registered for save/load."""
        if seed is None:
            seed = self.seed if self.seed is not None else 0
        world, rank = (self.state.world_size, self.state.rank) if shard else (1, 0)
        sampler = ResumableSampler(
            dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self._samplers.append(sampler)
        pending = self._pending["samplers"]
        if len(self._samplers) <= len(pending):
            # load() ran before this loader existed: give it the position it had when saved.
            old = pending[len(self._samplers) - 1]
            sampler.seek(int(old["epoch"]), int(old.get("start", 0)))
        return sampler

    def _make_generator(self) -> torch.Generator:
        """The generator a loader draws its workers' base seed from, registered for save/load."""
        # Mixing in the rank makes augmentation in workers differ across ranks after
        # seed_everything.
        base = self.seed if self.seed is not None else torch.initial_seed()
        generator = torch.Generator()
        generator.manual_seed((base * 1_000_003 + self.state.rank) % 2**63)
        self._generators.append(generator)
        pending = self._pending["generators"]
        if len(self._generators) <= len(pending):
            generator.set_state(pending[len(self._generators) - 1])
        return generator

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
        """A DataLoader giving this process ``batch_size`` samples a step from its own shard."""
        kwargs.setdefault("pin_memory", self.state.device.type == "cuda")
        generator = None
        if "generator" not in kwargs:
            generator = kwargs["generator"] = self._make_generator()
        if num_workers > 0 and stopping.listener.signals:
            kwargs["worker_init_fn"] = stopping.IgnoreFirstStop(
                stopping.listener.signals, kwargs.get("worker_init_fn")
            )
        sampler = None
        if isinstance(dataset, IterableDataset):
            if shard and self.state.world_size > 1:
                dataset = RankShard(dataset, self.state.rank, self.state.world_size, drop_last)
        else:
            sampler = self.make_sampler(dataset, shuffle, drop_last, seed, shard)
        tracker = Tracker(self, sampler, generator, batch_size, drop_last)
        self._trackers.append(tracker)
        if sampler is None:
            iterables = [t for t in self._trackers if t.sampler is None]
            pending = self._pending["iterables"]
            if len(iterables) <= len(pending):
                tracker.seek(pending[len(iterables) - 1])
        made = ResumableLoader(
            dataset,
            batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=num_workers,
            **kwargs,
        )
        made.tracker = tracker
        return made

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

    def _seed_sampler(self, dataset: Dataset[Any]) -> ResumableSampler:
        """The sampler get_loader made earlier for this dataset, or a new one."""
        for known, sampler in self._seed_samplers:
            if known is dataset:
                return sampler
        sampler = self.make_sampler(dataset, shuffle=True, drop_last=False, seed=None)
        self._seed_samplers.append((dataset, sampler))
        return sampler

    # -- what the step and the metrics need to know ------------------------------------------

    def last_batch(self) -> BatchInfo | None:
        """The batch the most recently used loader handed out last (None before any)."""
        return self.active.info if self.active is not None else None

    def batches_left(self) -> int | None:
        """Batches after the current one in the pass under way (None when unknown or ended)."""
        info = self.last_batch()
        if info is None or info.finished:
            return None
        return info.remaining

    # -- save and resume -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Each sampler's and iterable loader's position and each generator's state, in order."""
        by_sampler = {id(t.sampler): t for t in self._trackers if t.sampler is not None}
        by_generator = {id(t.generator): t for t in self._trackers if t.generator is not None}
        samplers = []
        for sampler in self._samplers:
            tracker = by_sampler.get(id(sampler))
            if tracker is not None:
                samplers.append(tracker.position())
            else:
                samplers.append({"epoch": sampler.next_epoch, "start": sampler.next_start})
        generators = []
        for generator in self._generators:
            tracker = by_generator.get(id(generator))
            state = tracker.generator_state() if tracker is not None else None
            generators.append(state if state is not None else generator.get_state())
        iterables = [t.position() for t in self._trackers if t.sampler is None]
        return {"samplers": samplers, "generators": generators, "iterables": iterables}

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        """Restore loaders made so far; keep the rest for loaders made after this call."""
        self._pending = {
            "samplers": list(saved.get("samplers", [])),
            "generators": list(saved.get("generators", [])),
            "iterables": list(saved.get("iterables", [])),
        }
        by_sampler = {id(t.sampler): t for t in self._trackers if t.sampler is not None}
        for sampler, old in zip(self._samplers, self._pending["samplers"], strict=False):
            tracker = by_sampler.get(id(sampler))
            if tracker is not None:
                tracker.seek(old)
            else:
                sampler.seek(int(old["epoch"]), int(old.get("start", 0)))
        for generator, gstate in zip(self._generators, self._pending["generators"], strict=False):
            generator.set_state(gstate)
        iterables = [t for t in self._trackers if t.sampler is None]
        for tracker, old in zip(iterables, self._pending["iterables"], strict=False):
            tracker.seek(old)
        self.active = None


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
