"""ParallelTrainer: one training script for CPU, one GPU, or DDP over torchrun's processes.

One concern per module; ``ParallelTrainer`` (``parallel.py``) is the facade over them:

==============  ===========================================================================
state.py        ProcessState: rank, world, device, process group, ``main_process_first``;
                usable alone
devices.py      which device (HANDYJOBS_DEVICE, config, torchrun), checked against CUDA
collectives.py  all_reduce, gather, broadcast; bytes in chunks over the CPU group
data.py         samplers that shard and reshuffle, resumable loaders, ``to_device``
precision.py    autocast, the fp16 grad scaler, accumulation, clipping, stepping
models.py       DDP wrapping with the config's options, and unwrapping
checkpoint.py   atomic saves on rank 0, loads everywhere, the trainer's own state
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
