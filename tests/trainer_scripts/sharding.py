"""FSDP2 under torchrun: ``strategy="fsdp"`` against DDP, sharded and full checkpoints, by hand.

Usage: ``python sharding.py fsdp OUTDIR``. Each process writes ``OUTDIR/fsdp_rank<R>.json``;
rank 0 leaves ``sharded/`` (a sharded checkpoint folder) and ``full.pt`` (the same state in
one file) for the test to load in a single process.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.utils.data import TensorDataset

from handyjobs import ParallelTrainer

FEATURES = 8
BATCH = 4
EPOCHS = 2
#: A synced micro-step in the middle of the second epoch (8 micro-steps an epoch).
SAVE_AT = 12


class Block(nn.Module):
    """A linear layer and a non-linearity: the unit the policy shards."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(x))


def make_model() -> nn.Module:
    """Two blocks and a head, the same in every process after seeding."""
    return nn.Sequential(Block(FEATURES, 16), Block(16, 16), nn.Linear(16, 1))


def make_data() -> TensorDataset:
    """64 samples: 32 per rank, 8 batches of 4."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(64, FEATURES, generator=gen)
    return TensorDataset(x, x.sum(dim=1, keepdim=True).sin())


def setup(trainer: ParallelTrainer) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    """Seeded model (sharded per Block under FSDP), Adam made after it, and a loader."""
    trainer.seed_everything(3)
    model = trainer.model_parallel(make_model(), policy={Block})
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    return model, optimizer, trainer.loader(make_data(), batch_size=BATCH)


def train(
    trainer: ParallelTrainer,
    parts: tuple[nn.Module, torch.optim.Optimizer, Any],
    epoch: int = 0,
    micro: int = 0,
    save: Path | None = None,
) -> list[float]:
    """Train with accumulation over 2 micro-steps; save at SAVE_AT when ``save`` is given."""
    model, optimizer, loader = parts
    losses = []
    for current in range(epoch, EPOCHS):
        for x, y in loader:
            with trainer.accumulate(model, 2) as sync:
                with trainer.autocast():
                    loss = nn.functional.mse_loss(model(x).float(), y)
                trainer.backward(loss)
            micro += 1
            losses.append(loss.item())
            if sync:
                trainer.step(optimizer)
            if save is not None and micro == SAVE_AT:
                trainer.save(save / "sharded", model=model, optimizer=optimizer,
                             epoch=current, micro=micro)  # fmt: skip
                trainer.save(save / "full.pt", sharded=False, model=model, optimizer=optimizer,
                             epoch=current, micro=micro)  # fmt: skip
    return losses


def local_params(model: nn.Module) -> list[float]:
    """This rank's shard of every parameter (the whole parameter when not sharded)."""
    parts = [getattr(p, "to_local", lambda p=p: p)().detach().flatten() for p in model.parameters()]
    return torch.cat(parts).tolist()


def check_against_ddp() -> dict[str, Any]:
    """The same training under DDP and under FSDP: the losses must agree."""
    found = {}
    for strategy in ("ddp", "fsdp"):
        trainer = ParallelTrainer(config={"device": "cpu"}, strategy=strategy)
        found[strategy] = train(trainer, setup(trainer))
        trainer.close()
    return {"ddp": found["ddp"], "fsdp": found["fsdp"]}


def check_round_trip(out: Path) -> dict[str, Any]:
    """Save sharded and full mid-epoch; fresh trainers resume from each: the same losses."""
    trainer = ParallelTrainer(config={"device": "cpu"}, strategy="fsdp")
    parts = setup(trainer)
    reference = train(trainer, parts, save=out)
    result: dict[str, Any] = {
        "expected": reference[SAVE_AT:],
        "sharded_type": type(parts[0]).__name__,
        "files": sorted(p.name for p in (out / "sharded").iterdir()),
    }
    trainer.close()
    for kind in ("sharded", "full.pt"):
        fresh = ParallelTrainer(config={"device": "cpu"}, strategy="fsdp")
        model, optimizer, loader = setup(fresh)
        saved = fresh.load(out / kind, model=model, optimizer=optimizer)
        result[kind] = train(fresh, (model, optimizer, loader), saved["epoch"], saved["micro"])
        fresh.close()
    return result


def shard_by_hand(model: nn.Module) -> None:
    """What a script does without the trainer's FSDP strategy: fully_shard each Block, then all."""
    for block in model.modules():
        if isinstance(block, Block):
            fully_shard(block)
    fully_shard(model)


def check_by_hand(out: Path) -> dict[str, Any]:
    """FSDP2 applied by hand under the default strategy: model_parallel keeps it; save is whole."""
    trainer = ParallelTrainer(config={"device": "cpu"})
    torch.manual_seed(0)
    model = make_model()
    shard_by_hand(model)
    same = trainer.model_parallel(model) is model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = make_data()[:4]
    trainer.backward(nn.functional.mse_loss(model(x), y))
    trainer.step(optimizer)
    trainer.save(out / "by_hand", model=model)  # FSDP models: a sharded folder by default
    trainer.save(out / "by_hand.pt", sharded=False, model=model)  # the whole model in a file
    torch.manual_seed(1)  # another init, so a load that did nothing shows
    fresh = make_model()
    shard_by_hand(fresh)
    trainer.load(out / "by_hand", model=fresh)
    trainer.close()
    return {
        "model_parallel_kept_it": same,
        "reloaded_equal": local_params(fresh) == local_params(model),
    }


def check_mixed(precision: str) -> dict[str, Any]:
    """bf16 / fp16 through FSDP2's mixed-precision policy: steps taken, parameters kept fp32."""
    trainer = ParallelTrainer(config={"device": "cpu", "precision": precision}, strategy="fsdp")
    model, optimizer, loader = setup(trainer)
    stepped, losses = [], []
    for x, y in loader:
        with trainer.autocast():
            loss = nn.functional.mse_loss(model(x).float(), y)
        trainer.backward(loss)
        stepped.append(trainer.step(optimizer))
        losses.append(loss.item())
    result = {
        "stepped": stepped,
        "finite": all(torch.isfinite(torch.tensor(losses)).tolist()),
        "param_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
        "scaler": type(trainer.scaler).__name__ if trainer.scaler is not None else None,
    }
    trainer.close()
    return result


def main() -> None:
    """Every check in one launch (each start costs seconds); write this rank's result."""
    out = Path(sys.argv[2])
    owner = ParallelTrainer(config={"device": "cpu", "init_timeout": 120})
    result = {
        "against_ddp": check_against_ddp(),
        "round_trip": check_round_trip(out),
        "by_hand": check_by_hand(out),
        "bf16": check_mixed("bf16"),
        "fp16": check_mixed("fp16"),
    }
    owner.close()
    rank = os.environ.get("RANK", "0")
    tmp = out / f".fsdp_rank{rank}.json.tmp"
    tmp.write_text(json.dumps(result))
    tmp.replace(out / f"fsdp_rank{rank}.json")


if __name__ == "__main__":
    main()
