"""Sharding: a sampler that reshuffles and can start a pass mid-way, and iterables split by rank.

``ResumableSampler`` is what makes resuming exact: a checkpoint records the epoch and the
position inside this rank's shard, and the next pass starts there without handing the skipped
indices to the DataLoader, so their samples are never loaded. ``RankShard`` gives an iterable
dataset's items to the ranks in turn, each rank the same number, so no rank waits for a step
the others never take.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from torch.utils.data import DistributedSampler, IterableDataset


class ResumableSampler(DistributedSampler[Any]):
    """A DistributedSampler whose epoch advances on every pass and whose next pass may start late.

    ``set_epoch`` still works (the seed's explicit style); without it each pass takes the next
    epoch's order. ``seek(epoch, start)`` makes the next pass that epoch's order from position
    ``start`` of this rank's shard.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """As DistributedSampler; the first pass is epoch 0 from its first sample."""
        super().__init__(*args, **kwargs)
        self.next_epoch = 0
        self.next_start = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next pass, from its beginning."""
        super().set_epoch(epoch)
        self.seek(epoch, 0)

    def seek(self, epoch: int, start: int) -> None:
        """Make the next pass ``epoch``'s order, skipping the shard's first ``start`` samples."""
        self.next_epoch = epoch
        self.next_start = max(0, start)

    def __iter__(self) -> Iterator[Any]:
        """This pass's indices from its start position, then count the pass."""
        self.epoch = self.next_epoch
        self.start = min(self.next_start, self.num_samples)
        self.next_epoch += 1
        self.next_start = 0
        # Only indices are skipped here; the DataLoader loads what is handed to it.
        return iter(list(super().__iter__())[self.start :])

    @property
    def real_samples(self) -> int:
        """How many of this rank's samples are not padding.

        DistributedSampler evens the shards by repeating the first indices after the last
        (global positions from ``len(dataset)`` on); position ``rank + i * world`` is sample
        ``i`` of this shard, so the padding is always at the end of a shard.
        """
        if self.drop_last:
            return self.num_samples
        total = len(self.dataset)  # type: ignore[arg-type]  # a map-style dataset has a length
        return len(range(self.rank, total, self.num_replicas))


class RankShard(IterableDataset[Any]):
    """Item ``rank``, ``rank + world``, ... of an iterable dataset; every rank gets as many.

    The last, short group is padded with the stream's first items (as DistributedSampler pads a
    map-style shard), or dropped with ``drop_last``. Each rank reads the whole stream and keeps
    its share. Inside DataLoader workers the dataset itself must still split its stream by
    ``torch.utils.data.get_worker_info()``, exactly as in one process.
    """

    def __init__(self, dataset: Iterable[Any], rank: int, world: int, drop_last: bool) -> None:
        """Wrap ``dataset`` for rank ``rank`` of ``world``."""
        self.dataset = dataset
        self.rank = rank
        self.world = world
        self.drop_last = drop_last

    def __iter__(self) -> Iterator[Any]:
        """This rank's items, in stream order."""
        first: list[Any] = []
        group: list[Any] = []
        for item in self.dataset:
            if len(first) < self.world:
                first.append(item)
            group.append(item)
            if len(group) == self.world:
                yield group[self.rank]
                group = []
        if group and not self.drop_last:
            filled = group + list(itertools.islice(itertools.cycle(first), self.world))
            yield filled[self.rank]

    def __len__(self) -> int:
        """Items per rank, when the wrapped dataset knows its length (else a TypeError)."""
        total = len(self.dataset)  # type: ignore[arg-type]  # TypeError when it has none
        return total // self.world if self.drop_last else -(-total // self.world)
