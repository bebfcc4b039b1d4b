"""Seed-style training: TorchHandy's ``Parallel_Trainer(synch, config)`` usage, as its README shows.

One process:               python examples/seed_style.py
DDP, 2 processes on CPU:   handyjobs start examples/seed_style.py --cpu --nproc 2 -- --synch
DDP on GPUs 0 and 1:       handyjobs start examples/seed_style.py --gpus 0,1 -- --synch
with torchrun directly:    torchrun --nproc_per_node 2 examples/seed_style.py --synch
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn
from torch.utils.data import TensorDataset

from handyjobs import Parallel_Trainer


class Config(object):  # noqa: UP004 - the seed README's spelling, kept on purpose
    """The seed's config: a plain class whose attributes the trainer reads."""

    n_gpus = 2
    # The seed README writes device = 'cuda'; falling back to the CPU lets the example run
    # anywhere. Under DDP the device is cuda:LOCAL_RANK (or HANDYJOBS_DEVICE) regardless.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    epochs = 3
    batch_size = 32
    lr = 0.05
    out_dir = os.path.join("runs", "seed_style")


def make_dataset(n: int = 2048, features: int = 16) -> TensorDataset:
    """A synthetic regression task, identical in every process."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=generator)
    w = torch.randn(features, 1, generator=generator)
    y = torch.tanh(x @ w) + 0.05 * torch.randn(n, 1, generator=generator)
    return TensorDataset(x, y)


def make_model(features: int = 16) -> nn.Module:
    """A small MLP."""
    return nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="seed-style Parallel_Trainer example")
    parser.add_argument("--synch", "-s", action="store_true")
    args, unknown = parser.parse_known_args()
    synch = args.synch
    config = Config()
    trainer = Parallel_Trainer(synch, config)

    torch.manual_seed(0)
    device = trainer.get_device()
    model = trainer.model_parallel(make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    dataset = make_dataset()
    train_sampler = trainer.dataset_parallel(dataset)

    os.makedirs(config.out_dir, exist_ok=True)
    log_file = open(os.path.join(config.out_dir, "log.txt"), "a")  # noqa: SIM115 - seed style
    start = time.monotonic()
    for epoch in range(config.epochs):
        loader = trainer.get_loader(dataset, epoch, config.batch_size, 0, train_sampler)
        total, count = 0.0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, count = total + loss.item(), count + 1
        line = f"epoch {epoch + 1}/{config.epochs}: loss {total / count:.4f}"
        trainer.write_log(log_file, line)
        trainer.call_func(print, line, flush=True)
        ckpt = {"epoch": epoch + 1}
        trainer.save_model(ckpt, model, os.path.join(config.out_dir, "model.pt"))
    log_file.close()
    mode = "DDP" if synch else "one process"
    trainer.call_func(
        print,
        f"done: {config.epochs} epochs in {time.monotonic() - start:.1f}s ({mode}, {device})",
        flush=True,
    )
