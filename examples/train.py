"""Modern-style training with ParallelTrainer: the same script on CPU, one GPU or DDP, resumable.

python examples/train.py                                       # one process
handyjobs start examples/train.py --cpu --nproc 2              # 2 gloo processes on CPU
handyjobs start examples/train.py --gpus 0,1 -- --ckpt runs/train/last.pt --epochs 20
torchrun --nproc_per_node 2 examples/train.py --ckpt last.pt   # run again: it resumes

`handyjobs stop` (or Slurm's SIGUSR1) ends it cleanly: every rank leaves the loop at the same
step and, with --ckpt, saves first. Each epoch appends its loss, accuracy and learning rate to
the job's metrics.jsonl (./metrics.jsonl outside handyjobs).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from handyjobs import ParallelTrainer

CLASSES = 4
FEATURES = 32


def make_split(n: int, seed: int) -> TensorDataset:
    """Synthetic 4-class data: the class is the quadrant of two random projections."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=generator)
    projection = torch.randn(FEATURES, 2, generator=torch.Generator().manual_seed(99))
    z = x @ projection
    y = (z[:, 0] > 0).long() * 2 + (z[:, 1] > 0).long()
    return TensorDataset(x, y)


def make_model() -> nn.Module:
    """A small MLP classifier."""
    return nn.Sequential(
        nn.Linear(FEATURES, 128),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(128, 128),
        nn.ReLU(),
        nn.Linear(128, CLASSES),
    )


def parse_args() -> argparse.Namespace:
    """Command-line options; every one has a default so the script runs with none."""
    parser = argparse.ArgumentParser(description="ParallelTrainer example with checkpoints")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--ckpt", type=Path, default=None, help="save here; resume if it exists")
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--accumulate", type=int, default=1, help="micro-steps per step")
    parser.add_argument("--precision", default="32", help="32, bf16 or fp16")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


@torch.no_grad()
def evaluate(trainer: ParallelTrainer, model: nn.Module, loader: object) -> float:
    """Accuracy over the whole validation set, summed over every rank's shard."""
    model.eval()
    correct = total = 0
    for x, y in loader:  # type: ignore[attr-defined]
        x, y = trainer.to_device((x, y))
        with trainer.autocast():
            correct += int((model(x).argmax(dim=1) == y).sum())
        total += len(y)
    model.train()
    return trainer.all_reduce(correct, "sum") / max(trainer.all_reduce(total, "sum"), 1)


def main() -> None:
    """Train, print a few progress lines, checkpoint every epoch, and resume when asked."""
    args = parse_args()
    if "OMP_NUM_THREADS" not in os.environ:
        # A model this small runs fastest on one thread; more threads only contend for cores
        # (torchrun already sets this for its workers).
        torch.set_num_threads(1)
    with ParallelTrainer(config={"precision": args.precision}) as trainer:
        trainer.seed_everything(args.seed)
        model = trainer.model_parallel(make_model())
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
        train_loader = trainer.loader(make_split(8192, seed=1), batch_size=args.batch_size)
        val_loader = trainer.loader(make_split(1024, seed=2), batch_size=256, shuffle=False)
        steps_per_epoch = -(-len(train_loader) // args.accumulate)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(args.epochs * steps_per_epoch, 1)
        )
        trainer.print(
            f"training on {trainer.world_size} process(es), device {trainer.device}, "
            f"{len(train_loader)} steps of {args.batch_size} per process per epoch"
        )

        start_epoch, resumed_step = 0, 0
        # Ask rank 0: on several nodes without a shared disk only its node has the file.
        if args.ckpt is not None and trainer.broadcast(args.ckpt.exists()):
            state = trainer.load(args.ckpt, model=model, optimizer=optimizer, scheduler=scheduler)
            start_epoch = int(state["epoch"])
            resumed_step = int(state.get("step", start_epoch * len(train_loader)))
            trainer.print(f"resumed from {args.ckpt} after epoch {start_epoch}")

        started = time.monotonic()
        accuracy = evaluate(trainer, model, val_loader)
        stopped = False
        step = resumed_step  # the x of the curves, continued on resume
        for epoch in range(start_epoch, args.epochs):
            loss_sum = torch.zeros((), device=trainer.device)
            steps = 0
            for x, y in trainer.progress(train_loader, desc=f"epoch {epoch + 1}/{args.epochs}"):
                x, y = trainer.to_device((x, y))
                with trainer.accumulate(model, args.accumulate) as sync:
                    with trainer.autocast():
                        loss = nn.functional.cross_entropy(model(x), y)
                    trainer.backward(loss)
                if sync:
                    trainer.clip_grad_norm(model, 1.0, optimizer=optimizer)
                    trainer.step(optimizer)
                    scheduler.step()
                loss_sum += loss.detach().float()
                steps += 1
                step += 1
                if step % 4 == 0:  # rank 0's own loss (no collective): a curve for `plot`
                    trainer.log_metrics({"loss": loss.item()}, step=step)
                # `handyjobs stop` (SIGTERM) or a time-limit warning (SIGUSR1) on any rank: every
                # rank reads it here after the same step (it is a collective), so all leave
                # together, and the batch just trained counts as seen in the checkpoint.
                if trainer.should_stop:
                    stopped = True
                    break
            if stopped:
                if args.ckpt is not None:
                    # Mid-epoch: the loaders' positions are saved, so the resumed run goes on
                    # from the next unseen batch of this epoch.
                    trainer.save(
                        args.ckpt,
                        model=model,
                        optimizer=optimizer,
                        scheduler=scheduler,
                        epoch=epoch,
                        step=step,
                    )
                trainer.print(
                    f"stopped in epoch {epoch + 1} after {steps} steps; "
                    + (f"saved {args.ckpt}" if args.ckpt is not None else "no --ckpt, not saved")
                )
                break
            mean_loss = trainer.all_reduce(loss_sum.item() / max(steps, 1))
            accuracy = evaluate(trainer, model, val_loader)
            trainer.print(f"epoch {epoch + 1}: train loss {mean_loss:.4f}, val acc {accuracy:.3f}")
            # JSON lines in the job's folder (./metrics.jsonl outside handyjobs).
            trainer.log_metrics(
                {
                    "epoch": epoch + 1,  # for `handyjobs plot --x epoch`
                    "epoch_loss": mean_loss,
                    "val_acc": accuracy,
                    "lr": scheduler.get_last_lr()[0],
                },
                step=step,
            )
            if args.ckpt is not None:
                trainer.save(
                    args.ckpt,
                    model=model,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    epoch=epoch + 1,
                    step=step,
                )
        if not stopped:
            trainer.print(
                f"done: epoch {args.epochs}, val acc {accuracy:.3f}, "
                f"{time.monotonic() - started:.1f}s on {trainer.world_size} x {trainer.device}"
            )


if __name__ == "__main__":
    main()
