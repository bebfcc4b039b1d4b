"""ParallelTrainer in one process: resume mid-epoch, honest accumulation and steps, what save takes.

Each test here failed on the trainer before its second version: the checkpoint kept only the
next epoch, accumulation windows ran across epochs, ``step`` said nothing and updated the fp16
scale between two optimizers, and ``save`` wrote values that ``load`` then refused.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from handyjobs.trainer import ParallelTrainer, TrainerError, stopping
from handyjobs.trainer.sampler import RankShard, ResumableSampler

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "HANDYJOBS_DEVICE")


@pytest.fixture(autouse=True)
def plain_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A plain process (even inside a job) with its own stop flag."""
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    listener = stopping.StopListener()
    monkeypatch.setattr(stopping, "listener", listener)
    yield
    listener.uninstall()


class Recorded(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """23 fixed samples that remember which indices were loaded."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(23, 4, generator=gen)
        self.y = torch.randn(23, 1, generator=gen)
        self.loaded: list[int] = []

    def __len__(self) -> int:
        return 23

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.loaded.append(index)
        return self.x[index], self.y[index]


class Run:
    """One training run: trainer, model with dropout, Adam, a scheduler and a loader."""

    def __init__(self, precision: str, loader_first: bool = True) -> None:
        self.trainer = ParallelTrainer(config={"device": "cpu", "seed": 3, "precision": precision})
        self.model = self.trainer.model_parallel(
            nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
        )
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.01)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=2, gamma=0.7)
        self.data = Recorded()
        self.loader = self.make_loader() if loader_first else None

    def make_loader(self) -> Any:
        """5 batches an epoch: 4 of 5 samples and one of 3."""
        self.loader = self.trainer.loader(self.data, batch_size=5)
        return self.loader

    def train(
        self, epoch: int, save_at: int | None = None, path: Path | None = None
    ) -> list[float]:
        """Train to the end of epoch 3, accumulating over 2; save at micro-step ``save_at``."""
        losses: list[float] = []
        micro = 0
        assert self.loader is not None
        for current in range(epoch, 3):
            for x, y in self.loader:
                with self.trainer.accumulate(self.model, 2) as sync:
                    with self.trainer.autocast():
                        loss = nn.functional.mse_loss(self.model(x).float(), y)
                    self.trainer.backward(loss)
                if sync and self.trainer.step(self.optimizer):
                    self.scheduler.step()
                micro += 1
                losses.append(loss.item())
                if micro == save_at:
                    assert sync and path is not None
                    self.trainer.save(path, model=self.model, optimizer=self.optimizer,
                                      scheduler=self.scheduler, epoch=current)  # fmt: skip
        return losses

    def load(self, path: Path) -> int:
        """Restore the saved run; return its epoch."""
        saved = self.trainer.load(
            path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler
        )
        return int(saved["epoch"])


@pytest.mark.parametrize("loader_first", [True, False], ids=["loader-then-load", "load-first"])
@pytest.mark.parametrize("precision", ["32", "bf16", "fp16"])
def test_resume_mid_epoch_is_exact(precision: str, loader_first: bool, tmp_path: Path) -> None:
    """Saved at the 4th of an epoch's 5 batches: the resumed run repeats the losses bit for bit
    (data order, dropout masks, Adam, the scheduler, the fp16 scale) and never loads a sample
    it already trained on."""
    path = tmp_path / "mid.pt"
    expected = Run(precision).train(0, save_at=9, path=path)[9:]  # epoch 1, its 4th batch
    resumed = Run(precision, loader_first)
    epoch = resumed.load(path)
    if resumed.loader is None:
        resumed.make_loader()
    assert epoch == 1
    assert resumed.train(epoch) == expected
    # The resumed pass loaded only epoch 1's last batch (3 samples), then all of epoch 2.
    assert len(resumed.data.loaded) == 3 + 23


def test_resume_after_the_last_batch_of_a_pass_replays_nothing(tmp_path: Path) -> None:
    """Saved at an epoch's last batch: the rest of that pass is empty, then the next comes."""
    losses = Run("32").train(0, save_at=10, path=tmp_path / "end.pt")  # epoch 1's 5th batch
    resumed = Run("32")
    epoch = resumed.load(tmp_path / "end.pt")
    assert epoch == 1
    assert resumed.train(epoch) == losses[10:]
    assert len(resumed.data.loaded) == 23  # epoch 2 only


def test_accumulation_closes_at_the_end_of_each_epoch() -> None:
    """5 batches, accumulate(model, 2): syncs at 2, 4 and 5 in each epoch; the short last
    window's loss is divided by 1 (its own length), not by 2."""
    trainer = ParallelTrainer(config={"device": "cpu"})
    model = nn.Linear(1, 1, bias=False)
    trainer.model_parallel(model)
    loader = trainer.loader(TensorDataset(torch.ones(9, 1)), batch_size=2, shuffle=False)
    flags, grads = [], []
    for _ in range(2):
        for (x,) in loader:
            with trainer.accumulate(model, 2) as sync:
                trainer.backward(model(x).mean())
            flags.append(sync)
            if sync:
                assert model.weight.grad is not None
                grads.append(float(model.weight.grad.sum()))
                model.zero_grad(set_to_none=True)
    assert flags == [False, True, False, True, True] * 2
    assert grads == [1.0, 1.0, 1.0] * 2  # d mean(w x) / dw = 1 for every window


def test_step_says_whether_the_optimizer_stepped() -> None:
    """fp16: an inf gradient makes step() return False and leaves the weights; then True."""
    trainer = ParallelTrainer(config={"device": "cpu", "precision": "fp16"})
    model = nn.Linear(2, 1)
    trainer.model_parallel(model)  # one process: the same module, on the device
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.weight.detach().clone()
    trainer.backward(model(torch.ones(1, 2)).sum() * float("inf"))
    assert trainer.step(optimizer) is False
    assert torch.equal(model.weight, before)
    trainer.backward(model(torch.ones(1, 2)).sum() * 1e-3)
    assert trainer.step(optimizer) is True
    assert not torch.equal(model.weight, before)
    plain = ParallelTrainer(config={"device": "cpu"})
    trainer_model = plain.model_parallel(nn.Linear(2, 1))
    plain.backward(trainer_model(torch.ones(1, 2)).sum())
    assert plain.step(torch.optim.SGD(trainer_model.parameters(), lr=0.1)) is True


def test_fp16_two_optimizers_each_unscaled_by_its_own_scale() -> None:
    """Two models, two optimizers, one fp16 scaler: the first overflows and is skipped; the
    second must still be unscaled with the scale its gradients were multiplied by."""
    trainer = ParallelTrainer(config={"device": "cpu", "precision": "fp16"})
    first, second = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        first.weight.fill_(1.0)
        second.weight.fill_(1.0)
    opt_first = torch.optim.SGD(first.parameters(), lr=0.5)
    opt_second = torch.optim.SGD(second.parameters(), lr=0.5)
    x = torch.ones(1, 1)
    trainer.backward(first(x).sum() * float("inf") + second(x).sum())
    skipped, stepped = trainer.step(opt_first), trainer.step(opt_second)
    # d(w x)/dw = 1, so one SGD step takes the weight from 1.0 to 0.5 (not 0.0 with a halved scale).
    assert second.weight.item() == pytest.approx(0.5)
    assert first.weight.item() == 1.0
    assert (skipped, stepped) == (False, True)
    assert trainer.scaler is not None
    scale = trainer.scaler.get_scale()
    trainer.backward(second(x).sum())  # the pending update ran: one back-off for the overflow
    assert trainer.scaler.get_scale() == scale / 2


@pytest.mark.parametrize(
    ("value", "advice"),
    [
        (argparse.Namespace(lr=0.1), "vars(args)"),
        (numpy.float64(0.5), "value.item()"),
        ({"nested": [1, numpy.int64(3)]}, "value.item()"),
        (Path("/tmp/x"), "str(path)"),
    ],
    ids=["namespace", "numpy-scalar", "nested-numpy", "path"],
)
def test_save_refuses_what_load_could_not_read(value: Any, advice: str, tmp_path: Path) -> None:
    """One line naming the entry and what to save instead; no file is written."""
    trainer = ParallelTrainer(config={"device": "cpu"})
    with pytest.raises(TrainerError) as info:
        trainer.save(tmp_path / "c.pt", model=nn.Linear(1, 1), args=value)
    message = str(info.value)
    assert "'args'" in message and advice in message and "\n" not in message
    assert not (tmp_path / "c.pt").exists()


def test_save_takes_what_load_reads(tmp_path: Path) -> None:
    """Plain values of every kind load back, schedulers and GradScaler states included."""
    trainer = ParallelTrainer(config={"device": "cpu", "precision": "fp16"})
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=10)
    trainer.save(tmp_path / "ok.pt", model=model, optimizer=optimizer, scheduler=scheduler,
                 epoch=3, best=0.25, name="run", shape=[2, 3], t=torch.ones(2))  # fmt: skip
    loaded = trainer.load(tmp_path / "ok.pt", scheduler=scheduler)
    assert loaded["epoch"] == 3 and loaded["shape"] == [2, 3]
    assert torch.equal(loaded["t"], torch.ones(2))


def test_load_strict_and_weights_only(tmp_path: Path) -> None:
    """strict=False loads the weights that fit; weights_only=False reads a trusted pickle."""
    trainer = ParallelTrainer(config={"device": "cpu"})
    small = nn.Sequential(nn.Linear(2, 2))
    trainer.save(tmp_path / "small.pt", model=small)
    bigger = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    with pytest.raises(RuntimeError, match="Missing key"):
        trainer.load(tmp_path / "small.pt", model=bigger)
    trainer.load(tmp_path / "small.pt", model=bigger, strict=False)
    assert torch.equal(bigger[0].weight, small[0].weight)  # type: ignore[arg-type]
    torch.save({"args": argparse.Namespace(lr=0.5)}, tmp_path / "old.pt")
    with pytest.raises(Exception, match="weights_only"):
        trainer.load(tmp_path / "old.pt")
    assert trainer.load(tmp_path / "old.pt", weights_only=False)["args"].lr == 0.5


def test_checkpoint_of_the_first_version_still_resumes(tmp_path: Path) -> None:
    """A version-1 checkpoint (only the next epoch per sampler) resumes at that epoch."""
    first = ParallelTrainer(config={"device": "cpu", "seed": 1})
    loader = first.loader(TensorDataset(torch.arange(12)), batch_size=4)
    epochs = [[int(i) for (b,) in loader for i in b] for _ in range(3)]
    saved = {"handyjobs": {"version": 1, "world_size": 1, "scaler": None,
                           "ranks": [{"samplers": [{"epoch": 2}], "generators": []}]}}  # fmt: skip
    torch.save(saved, tmp_path / "v1.pt")
    second = ParallelTrainer(config={"device": "cpu", "seed": 1})
    again = second.loader(TensorDataset(torch.arange(12)), batch_size=4)
    second.load(tmp_path / "v1.pt")
    assert [int(i) for (b,) in again for i in b] == epochs[2]


def test_sampler_knows_its_padding() -> None:
    """1001 samples on 2 ranks: rank 0 has 501 real ones, rank 1 500 and one repeat."""
    data = TensorDataset(torch.arange(1001))
    shards = [ResumableSampler(data, num_replicas=2, rank=r, shuffle=False) for r in range(2)]
    assert [s.num_samples for s in shards] == [501, 501]
    assert [s.real_samples for s in shards] == [501, 500]
    assert list(shards[1])[-1] == 0  # the repeat is the first index, at the end of the shard
    shards[1].seek(0, 498)
    assert list(shards[1]) == [997, 999, 0]


def test_gather_for_metrics_in_one_process() -> None:
    """One process has no padding: gather_for_metrics is gather, nested values walked."""
    trainer = ParallelTrainer(config={"device": "cpu"})
    loader = trainer.loader(TensorDataset(torch.arange(7.0)), batch_size=3, shuffle=False)
    seen = [
        trainer.gather_for_metrics({"x": x, "ids": [str(int(i)) for i in x]}) for (x,) in loader
    ]
    assert torch.equal(torch.cat([s["x"] for s in seen]), torch.arange(7.0))
    assert [i for s in seen for i in s["ids"]] == [str(i) for i in range(7)]


def test_rank_shard_gives_every_rank_as_many_items() -> None:
    """An iterable of 5 items on 2 ranks: 0, 2, 4 and 1, 3, 0 (padded); drop_last: 2 each."""
    stream = list(range(5))
    assert [list(RankShard(stream, r, 2, drop_last=False)) for r in range(2)] == [
        [0, 2, 4],
        [1, 3, 0],
    ]
    assert [list(RankShard(stream, r, 2, drop_last=True)) for r in range(2)] == [[0, 2], [1, 3]]
    assert len(RankShard(stream, 1, 2, drop_last=False)) == 3


class Stream(IterableDataset[int]):
    """0..9 with no length."""

    def __iter__(self) -> Iterator[int]:
        return iter(range(10))


def test_iterable_dataset_resumes_after_the_batches_it_handed_out(tmp_path: Path) -> None:
    """An iterable cannot seek: after load its pass skips (by reading) what was handed out."""
    trainer = ParallelTrainer(config={"device": "cpu"})
    loader = trainer.loader(Stream(), batch_size=3)
    batches = iter(loader)
    next(batches)
    trainer.save(tmp_path / "it.pt")
    fresh = ParallelTrainer(config={"device": "cpu"})
    again = fresh.loader(Stream(), batch_size=3)
    fresh.load(tmp_path / "it.pt")
    assert [int(i) for b in again for i in b] == list(range(3, 10))
    assert [int(i) for b in again for i in b] == list(range(10))


def test_strategy_fsdp_in_one_process_and_sharded_folders(tmp_path: Path) -> None:
    """One process has nothing to shard over: the model stays plain; sharded=True still writes
    a folder that loads back; a bad strategy is refused."""
    trainer = ParallelTrainer(config={"device": "cpu"}, strategy="fsdp")
    model = nn.Linear(3, 2)
    assert trainer.model_parallel(model, policy={nn.Linear}) is model
    optimizer = torch.optim.Adam(model.parameters())
    trainer.backward(model(torch.ones(1, 3)).sum())
    trainer.step(optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "assuming a single process" noise from DCP
        trainer.save(tmp_path / "ck", sharded=True, model=model, optimizer=optimizer, step=4)
        fresh = nn.Linear(3, 2)
        fresh_opt = torch.optim.Adam(fresh.parameters())
        assert trainer.load(tmp_path / "ck", model=fresh, optimizer=fresh_opt)["step"] == 4
    assert torch.equal(fresh.weight, model.weight)
    assert fresh_opt.state_dict()["state"][0]["step"] == 1
    trainer.save(tmp_path / "ck", model=model)  # a file may replace the folder
    assert (tmp_path / "ck").is_file()
    with pytest.raises(TrainerError, match="strategy='zero'"):
        ParallelTrainer(config={"device": "cpu", "strategy": "zero"})
