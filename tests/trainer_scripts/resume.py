"""Resume mid-epoch, metrics without duplicates, iterable datasets split by rank, under torchrun.

Usage: ``python resume.py MODE OUTDIR`` where MODE is ``many`` (several checks in one launch)
or ``restartable`` (a job that ``handyjobs stop`` stops mid-epoch and ``restart`` resumes).
Each process writes ``OUTDIR/<name>_rank<R>.json``; the tests compare and assert on them.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from handyjobs import ParallelTrainer

N_SAMPLES = 60
FEATURES = 8
BATCH = 4  # per process: 30 samples per rank, 8 batches an epoch (the last one of 2)
EPOCHS = 3
ACCUMULATE = 3  # windows of 3, 3 and 2 micro-steps in each epoch (closed at its end)
#: A synced micro-step in the middle of the second epoch (its 6th batch of 8).
SAVE_AT = 14


@dataclass
class Parts:
    """What one training run holds."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: Any = None


def make_data() -> TensorDataset:
    """A fixed regression data set, the same in every process."""
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(N_SAMPLES, FEATURES, generator=gen)
    y = x @ torch.randn(FEATURES, 1, generator=gen) + 0.1 * torch.randn(N_SAMPLES, 1, generator=gen)
    return TensorDataset(x, y)


def make_parts(trainer: ParallelTrainer, with_loader: bool = True) -> Parts:
    """An MLP with dropout, AdamW, warmup then cosine, and a shuffling loader."""
    trainer.seed_everything(5)
    model = trainer.model_parallel(
        nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 1))
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)

    def warmup_cosine(step: int) -> float:
        return min(1.0, (step + 1) / 3) * 0.5 * (1 + math.cos(math.pi * min(step, 20) / 20))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)
    parts = Parts(model, optimizer, scheduler)
    if with_loader:
        parts.loader = trainer.loader(make_data(), batch_size=BATCH)
    return parts


#: Called after each synced micro-step with (epoch, micro-steps so far); True ends training.
Hook = Callable[[int, int], bool]


def train(
    trainer: ParallelTrainer, parts: Parts, epoch: int, micro: int, hook: Hook | None = None
) -> tuple[list[float], int, int]:
    """Train from ``epoch`` (the loader knows the batch); returns losses and where it ended."""
    model, optimizer = parts.model, parts.optimizer
    losses: list[float] = []
    for current in range(epoch, EPOCHS):
        for x, y in parts.loader:
            with trainer.accumulate(model, ACCUMULATE) as sync:
                with trainer.autocast():
                    loss = nn.functional.mse_loss(model(x).float(), y)
                trainer.backward(loss)
            micro += 1
            losses.append(loss.item())
            if not sync:
                continue
            trainer.clip_grad_norm(model, 1.0, optimizer=optimizer)
            if trainer.step(optimizer):
                parts.scheduler.step()
            if hook is not None and hook(current, micro):
                return losses, current, micro
    return losses, EPOCHS, micro


def flat_params(model: nn.Module) -> list[float]:
    """All parameters as one list of floats, for JSON."""
    return torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()


def check_resume(precision: str, out: Path) -> dict[str, Any]:
    """Save at a mid-epoch step and run on; a fresh trainer resumes from the save: same losses."""
    config = {"device": "cpu", "precision": precision, "init_timeout": 120}
    path = out / f"mid_{precision}.pt"
    first = ParallelTrainer(config=config)
    parts = make_parts(first)

    def save_once(epoch: int, micro: int) -> bool:
        if micro == SAVE_AT:
            first.save(path, model=parts.model, optimizer=parts.optimizer,
                       scheduler=parts.scheduler, epoch=epoch, micro=micro)  # fmt: skip
        return False

    reference, _, _ = train(first, parts, 0, 0, save_once)
    first.close()
    second = ParallelTrainer(config=config)
    fresh = make_parts(second)
    saved = second.load(path, model=fresh.model, optimizer=fresh.optimizer,
                        scheduler=fresh.scheduler)  # fmt: skip
    resumed, _, _ = train(second, fresh, saved["epoch"], saved["micro"])
    second.close()
    return {
        "saved_epoch": saved["epoch"],
        "expected": reference[SAVE_AT:],
        "resumed": resumed,
        "same_weights": flat_params(parts.model) == flat_params(fresh.model),
    }


class Numbers(Dataset[torch.Tensor]):
    """Sample i is the number i, so duplicates and gaps are visible."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(float(index))


def check_metrics(trainer: ParallelTrainer) -> dict[str, Any]:
    """1001 samples on 2 ranks: gather counts 1002, gather_for_metrics 1001 (batches and pass)."""
    loader = trainer.loader(Numbers(1001), batch_size=64, shuffle=False)
    per_batch: list[float] = []
    plain = 0
    mine = []
    for batch in loader:
        per_batch += trainer.gather_for_metrics(batch).tolist()
        plain += len(trainer.gather(batch))
        mine.append(batch)
    whole = trainer.gather_for_metrics(torch.cat(mine))
    labels = trainer.gather_for_metrics([f"s{int(i)}" for i in mine[-1]])
    return {
        "per_batch": sorted(per_batch),
        "whole": sorted(whole.tolist()),
        "plain_count": plain,
        "last_labels": len(labels),
        "sum_of_counts": trainer.all_reduce(len(torch.cat(mine)), "sum"),
    }


class Stream(IterableDataset[int]):
    """0, 1, ..., n - 1, with no length: every rank would read all of it."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))


def check_iterable(trainer: ParallelTrainer) -> list[int]:
    """An IterableDataset through trainer.loader: this rank's items over two passes."""
    loader = trainer.loader(Stream(101), batch_size=8)
    return [int(i) for _ in range(2) for batch in loader for i in batch]


def check_ddp_options(trainer: ParallelTrainer) -> dict[str, Any]:
    """model_parallel(model, find_unused_parameters=True) for a model that skips a layer."""

    class Skipper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(4, 1)
            self.unused = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)  # type: ignore[no-any-return]

    model = trainer.model_parallel(Skipper(), find_unused_parameters=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        trainer.backward(model(torch.ones(2, 4)).sum())
        trainer.step(optimizer)
    return {"find_unused": bool(getattr(model, "find_unused_parameters", False)), "ran": True}


def mode_many(out: Path) -> dict[str, Any]:
    """Mid-epoch resume for each precision, metrics, iterables and DDP options in one launch."""
    trainer = ParallelTrainer(config={"device": "cpu", "init_timeout": 120})
    result: dict[str, Any] = {"rank": trainer.rank}
    result["metrics"] = check_metrics(trainer)
    result["iterable"] = check_iterable(trainer)
    result["ddp_options"] = check_ddp_options(trainer)
    result["resume"] = {p: check_resume(p, out) for p in ("32", "bf16", "fp16")}
    trainer.close()
    return result


def mode_restartable(out: Path) -> dict[str, Any]:
    """A job that stops at SAVE_AT when asked (``handyjobs stop``), saves, and resumes on restart.

    Its first run also trains once without stopping (a second trainer over the same process
    group) and writes those losses: the reference the resumed run must repeat.
    """
    config = {"device": "cpu", "init_timeout": 120}
    trainer = ParallelTrainer(config=config)
    ckpt = out / "ckpt.pt"
    rank = trainer.rank
    if not trainer.broadcast(ckpt.exists()):
        reference_trainer = ParallelTrainer(config=config)
        reference, _, _ = train(reference_trainer, make_parts(reference_trainer), 0, 0)
        reference_trainer.close()
        write(out, "reference", rank, {"losses": reference})
        parts = make_parts(trainer)

        def wait_for_stop(epoch: int, micro: int) -> bool:
            if micro != SAVE_AT:
                return False
            trainer.should_stop  # noqa: B018  # the first read arms the stop handlers
            write(out, "ready", rank, {"pid": os.getpid()})
            deadline = time.monotonic() + 90
            while not trainer.should_stop:  # on every rank, in step: a collective
                if time.monotonic() > deadline:
                    raise RuntimeError("no stop arrived within 90 s")
                time.sleep(0.05)
            return True

        losses, epoch, micro = train(trainer, parts, 0, 0, wait_for_stop)
        trainer.save(ckpt, model=parts.model, optimizer=parts.optimizer,
                     scheduler=parts.scheduler, epoch=epoch, micro=micro)  # fmt: skip
        trainer.close()
        return {"stopped_at": micro, "epoch": epoch, "losses": losses}
    parts = make_parts(trainer, with_loader=False)
    saved = trainer.load(ckpt, model=parts.model, optimizer=parts.optimizer,
                         scheduler=parts.scheduler)  # fmt: skip
    parts.loader = trainer.loader(make_data(), batch_size=BATCH)  # made after load: also works
    losses, _, micro = train(trainer, parts, saved["epoch"], saved["micro"])
    trainer.close()
    write(out, "resumed", rank, {"losses": losses, "from": saved["micro"], "to": micro})
    return {}


def write(out: Path, name: str, rank: int, result: dict[str, Any]) -> None:
    """Write ``<name>_rank<R>.json`` whole (through a rename), so a poller never sees half."""
    tmp = out / f".{name}_rank{rank}.json.tmp"
    tmp.write_text(json.dumps(result))
    tmp.replace(out / f"{name}_rank{rank}.json")


def main() -> None:
    """Run one mode and write this process's result."""
    mode, out = sys.argv[1], Path(sys.argv[2])
    modes: dict[str, Callable[[Path], dict[str, Any]]] = {
        "many": mode_many,
        "restartable": mode_restartable,
    }
    result = modes[mode](out)
    if result:
        write(out, mode, int(os.environ.get("RANK", "0")), result)


if __name__ == "__main__":
    main()
