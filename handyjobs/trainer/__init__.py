"""ParallelTrainer: one training script for CPU, one GPU, or DDP / FSDP2 over torchrun's ranks.

One concern per module; ``ParallelTrainer`` (``parallel.py``) is the facade over them:

==============  ===========================================================================
state.py        ProcessState: rank, world, device, process group, ``main_process_first``;
                usable alone
devices.py      which device (HANDYJOBS_DEVICE, config, torchrun), checked against CUDA
collectives.py  all_reduce, gather, gather_for_metrics, broadcast; bytes over the CPU group
sampler.py      the resumable sampler (reshuffles, starts mid-pass, knows its padding);
                iterable datasets split by rank
data.py         loaders that count what they hand out (position, padding), ``to_device``
precision.py    autocast, the fp16 grad scaler, accumulation, clipping, stepping
models.py       DDP wrapping with the config's and the call's options, and unwrapping
fsdp.py         FSDP2: ``fully_shard`` per block with mixed precision; its state dicts
checkpoint.py   atomic one-file saves on rank 0, loads everywhere, the trainer's own state
sharded.py      sharded checkpoint folders through torch.distributed.checkpoint
entries.py      what ``save`` was given, sorted; the check that ``load`` reads it back
facets.py       the facade's facets: communication, data, the step, checkpoints
rng.py          seeding per rank, RNG states a checkpoint can hold
stopping.py     stop signals (SIGTERM, SIGUSR1) behind ``should_stop``
settings.py     config attributes and torchrun's environment variables
==============  ===========================================================================
"""

from __future__ import annotations

from handyjobs.trainer.errors import TrainerError, TrainerWarning
from handyjobs.trainer.parallel import Parallel_Trainer, ParallelTrainer
from handyjobs.trainer.state import ProcessState

__all__ = [
    "ParallelTrainer",
    "Parallel_Trainer",
    "ProcessState",
    "TrainerError",
    "TrainerWarning",
]
