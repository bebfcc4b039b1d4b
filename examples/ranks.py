"""Every rank prints (the docs' `ranks.py`): run it with --cpu --nproc 2."""

import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
print(f"rank {rank} of {world}: my shard is samples {rank}::{world}")
for step in range(3):
    print(f"rank {rank} step {step}: loss {1.0 / (step + 1 + rank):.3f}")
dist.barrier()
if rank == 0:
    print("all ranks done")
dist.destroy_process_group()
