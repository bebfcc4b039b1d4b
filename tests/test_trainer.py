"""ParallelTrainer in one process: config kinds, misuse errors, state, output, stop signals,
the device decisions a GPU machine would take, and the examples."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.data import TensorDataset

import handyjobs
from handyjobs.errors import HandyjobsError
from handyjobs.trainer import (
    Parallel_Trainer,
    ParallelTrainer,
    ProcessState,
    TrainerError,
    TrainerWarning,
    devices,
    state,
    stopping,
)
from handyjobs.views import curves

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "trainer_scripts" / "worker.py"
LAUNCH_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "HANDYJOBS_DEVICE",
    "HANDYJOBS_GPU_IDS",
    "HANDYJOBS_JOB",
    "HANDYJOBS_PROGRESS_FILE",
    "HANDYJOBS_METRICS_FILE",
    "HANDYJOBS_RUN",
)


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start as a plain process, even when pytest itself runs inside a job."""
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def fresh_stop_listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[stopping.StopListener]:
    """Each test its own stop flag; pytest's own signal handlers come back afterwards."""
    listener = stopping.StopListener()
    monkeypatch.setattr(stopping, "listener", listener)
    yield listener
    listener.uninstall()


def child_env(**extra: str) -> dict[str, str]:
    """Environment for example scripts: no launcher state, one thread."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def run_python(args: list[str], cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Run a Python script to the end, with a deadline."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def small_model() -> nn.Module:
    """A tiny model for state checks."""
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))


# -- import and names --------------------------------------------------------------------------


def test_importing_handyjobs_loads_no_torch() -> None:
    """``import handyjobs`` stays light; the trainer name pulls torch in on first use."""
    code = (
        "import sys, handyjobs; assert 'torch' not in sys.modules; "
        "handyjobs.ParallelTrainer; assert 'torch' in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_both_names_are_the_same_class() -> None:
    """The seed's name and the modern one are one class, both exported by the package."""
    assert handyjobs.Parallel_Trainer is ParallelTrainer
    assert handyjobs.ParallelTrainer is ParallelTrainer
    assert Parallel_Trainer is ParallelTrainer
    assert issubclass(TrainerError, HandyjobsError)


# -- config and launch -------------------------------------------------------------------------


class SeedConfig:
    """The seed's config style: class attributes, including ones the trainer does not know."""

    n_gpus = 2
    device = "cpu"
    dropout = 0.1


@dataclasses.dataclass
class DataConfig:
    """A dataclass config."""

    device: str = "cpu"
    precision: str = "bf16"
    learning_rate: float = 0.1


@pytest.mark.parametrize(
    "config",
    [
        None,
        SeedConfig(),
        DataConfig(),
        {"device": "cpu", "unknown": 1},
        SimpleNamespace(device=None),
    ],
    ids=["none", "class", "dataclass", "dict", "namespace"],
)
def test_config_kinds(config: Any) -> None:
    """Objects, dataclasses, dicts and None all work; unknown attributes are ignored."""
    with ParallelTrainer(None, config) as trainer:
        if not torch.cuda.is_available():
            assert trainer.device == torch.device("cpu")
        assert (trainer.rank, trainer.local_rank, trainer.world_size) == (0, 0, 1)
        assert trainer.is_main and not trainer.synch
        assert trainer.get_device() == trainer.device
        assert trainer.backend is None


def test_dataclass_precision_is_read() -> None:
    """config.precision picks bf16 autocast and no grad scaler."""
    trainer = ParallelTrainer(config=DataConfig())
    assert trainer.precision == "bf16"
    assert trainer.scaler is None


def test_synch_true_without_torchrun_says_how_to_launch() -> None:
    """synch=True in a plain process: an error naming both ways to launch."""
    with pytest.raises(TrainerError) as info:
        ParallelTrainer(True, SeedConfig())
    message = str(info.value)
    assert "torchrun" in message
    assert "handyjobs start" in message
    assert "--gpus" in message


def test_synch_false_with_several_processes_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """synch=False while torchrun started 2 processes: N lone copies is never wanted."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(TrainerError, match=r"synch=False.*2 processes"):
        ParallelTrainer(False, SeedConfig())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("where", ["config", "env"])
def test_cuda_without_cuda_is_a_clear_error(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """device='cuda' with no GPU names the source of the setting and the fix."""
    config = {"device": "cuda"} if where == "config" else {"device": "cpu"}
    if where == "env":
        monkeypatch.setenv("HANDYJOBS_DEVICE", "cuda")
    with pytest.raises(TrainerError) as info:
        ParallelTrainer(config=config)
    message = str(info.value)
    assert "no CUDA GPU" in message
    assert ("HANDYJOBS_DEVICE" if where == "env" else "config.device") in message
    assert "--cpu" in message


def test_handyjobs_device_overrides_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """HANDYJOBS_DEVICE (set by ``handyjobs start --cpu``) wins over config.device."""
    monkeypatch.setenv("HANDYJOBS_DEVICE", "cpu")
    trainer = ParallelTrainer(config={"device": "cuda"})
    assert trainer.device == torch.device("cpu")


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"device": "gpu7"}, "not a device"),
        ({"precision": "fp8"}, "precision"),
    ],
)
def test_bad_settings_are_clear_errors(config: dict[str, Any], match: str) -> None:
    """A malformed device or precision says what is accepted."""
    with pytest.raises(TrainerError, match=match):
        ParallelTrainer(config=config)


def test_bad_launcher_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed torchrun variable is reported by name."""
    monkeypatch.setenv("RANK", "zero")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(TrainerError, match="RANK"):
        ParallelTrainer()


# -- one-process behaviour -------------------------------------------------------------------


def test_collectives_in_one_process() -> None:
    """Collectives work without a process group and keep their result types."""
    trainer = ParallelTrainer(config={"device": "cpu"})
    assert trainer.all_reduce(3) == 3.0 and isinstance(trainer.all_reduce(3), float)
    assert trainer.all_reduce(3, "sum") == 3 and isinstance(trainer.all_reduce(3, "sum"), int)
    assert trainer.all_reduce(torch.tensor([1, 2]), "mean").dtype == torch.float64
    assert trainer.gather(torch.tensor(2.0)).tolist() == [2.0]
    assert trainer.gather({"a": 1}) == [{"a": 1}]
    assert trainer.broadcast("x") == "x"
    trainer.barrier()
    with pytest.raises(TrainerError, match="op="):
        trainer.all_reduce(1, "avg")
    with pytest.raises(TrainerError, match="gather"):
        trainer.all_reduce("text")


def test_to_device_walks_nested_containers() -> None:
    """Tensors inside dicts, lists, tuples and named tuples move; other values pass through."""
    Pair = namedtuple("Pair", "a b")
    trainer = ParallelTrainer(config={"device": "cpu"})
    batch = {"x": [torch.ones(2), (torch.zeros(1), "label")], "p": Pair(torch.ones(1), 3)}
    moved = trainer.to_device(batch)
    assert isinstance(moved["p"], Pair) and moved["p"].b == 3
    assert isinstance(moved["x"][1], tuple) and moved["x"][1][1] == "label"
    assert moved["x"][0].device == trainer.device


def test_to_device_keeps_packed_batch_sizes_on_the_cpu() -> None:
    """A PackedSequence's batch_sizes must stay on the CPU (RNN kernels read it there).

    The meta device stands in for a GPU: a copy that moved every field would put
    batch_sizes there too.
    """
    packed = pack_padded_sequence(torch.randn(3, 2, 4), torch.tensor([3, 2]))
    moved = handyjobs.trainer.data.to_device({"seq": packed}, torch.device("meta"))["seq"]
    assert type(moved) is type(packed)
    assert moved.data.device.type == "meta"
    assert moved.batch_sizes.device.type == "cpu"


def test_accumulate_yields_sync_on_the_last_micro_step() -> None:
    """accumulate(model, 3): sync on every third micro-step; the loss is divided by 3."""
    trainer = ParallelTrainer(config={"device": "cpu"})
    model = trainer.model_parallel(nn.Linear(2, 1, bias=False))
    flags = []
    for _ in range(6):
        with trainer.accumulate(model, 3) as sync:
            trainer.backward(model(torch.ones(1, 2)).sum())
        flags.append(sync)
    assert flags == [False, False, True, False, False, True]
    # Six backward passes of d(sum)/dw = 1, each scaled by 1/3.
    weight = model.weight
    assert isinstance(weight, torch.Tensor) and weight.grad is not None
    assert torch.allclose(weight.grad, torch.full((1, 2), 2.0))


def test_fp16_uses_a_grad_scaler() -> None:
    """precision fp16 creates a grad scaler; clip_grad_norm asks for the optimizer."""
    trainer = ParallelTrainer(config={"device": "cpu", "precision": "16-mixed"})
    assert trainer.scaler is not None
    model = trainer.model_parallel(nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with trainer.autocast():
        # Small, so the scaled gradients (x 65536) still fit in float16.
        loss = model(torch.ones(2, 4)).float().mean() * 1e-3
    trainer.backward(loss)
    with pytest.raises(TrainerError, match="optimizer="):
        trainer.clip_grad_norm(model, 1.0)
    norm = trainer.clip_grad_norm(model, 1.0, optimizer=optimizer)
    assert torch.isfinite(norm)
    trainer.step(optimizer)
    assert model.weight.grad is None  # stepped, then zeroed to None


def test_bf16_autocast_on_cpu() -> None:
    """precision bf16: matmuls inside autocast run in bfloat16."""
    trainer = ParallelTrainer(config={"device": "cpu", "precision": "bf16"})
    with trainer.autocast():
        product = torch.ones(2, 2) @ torch.ones(2, 2)
    assert product.dtype == torch.bfloat16


def test_save_model_is_atomic_and_leaves_the_dict_alone(tmp_path: Path) -> None:
    """save_model: caller's dict untouched, no temp file left, state without prefixes."""
    trainer = ParallelTrainer(config={"device": "cpu"})
    model = trainer.model_parallel(small_model())
    ckpt = {"epoch": 2}
    trainer.save_model(ckpt, model, tmp_path / "sub" / "model.pt")
    assert ckpt == {"epoch": 2}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["model.pt"]
    saved = torch.load(tmp_path / "sub" / "model.pt", weights_only=True)
    assert saved["epoch"] == 2
    small_model().load_state_dict(saved["state_dict"])


def test_load_accepts_seed_checkpoints_with_module_prefix(tmp_path: Path) -> None:
    """Checkpoints the seed saved from a DDP model (``module.`` keys) still load."""
    source = small_model()
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"model": state}, tmp_path / "old.pt")
    target = small_model()
    ParallelTrainer(config={"device": "cpu"}).load(tmp_path / "old.pt", model=target)
    for a, b in zip(source.parameters(), target.parameters(), strict=True):
        assert torch.equal(a, b)


def test_load_missing_entry_and_missing_file(tmp_path: Path) -> None:
    """Asking for something the checkpoint lacks, or a missing file, names what is wrong."""
    trainer = ParallelTrainer(config={"device": "cpu"})
    trainer.save(tmp_path / "c.pt", model=small_model(), step=1)
    with pytest.raises(TrainerError, match="no optimizer"):
        trainer.load(tmp_path / "c.pt", optimizer=torch.optim.SGD(small_model().parameters()))
    with pytest.raises(TrainerError, match="not found"):
        trainer.load(tmp_path / "missing.pt")
    with pytest.raises(TrainerError, match="reserved"):
        trainer.save(tmp_path / "d.pt", handyjobs=1)


def test_save_and_load_resume_exactly_in_one_process(tmp_path: Path) -> None:
    """After load, data order, dropout and the optimizer continue as if never stopped."""

    def setup() -> tuple[ParallelTrainer, nn.Module, Any, Any]:
        trainer = ParallelTrainer(config={"device": "cpu", "seed": 3})
        model = trainer.model_parallel(small_model())
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        data = TensorDataset(torch.randn(24, 4, generator=torch.Generator().manual_seed(0)))
        return trainer, model, optimizer, trainer.loader(data, batch_size=5)

    def epoch(trainer: ParallelTrainer, model: nn.Module, opt: Any, loader: Any) -> list[float]:
        losses = []
        for (x,) in loader:
            loss = model(x).pow(2).mean()
            trainer.backward(loss)
            trainer.step(opt)
            losses.append(loss.item())
        losses.append(random.random())
        return losses

    trainer, model, opt, loader = setup()
    epoch(trainer, model, opt, loader)
    trainer.save(tmp_path / "r.pt", model=model, optimizer=opt, epoch=1)
    expected = epoch(trainer, model, opt, loader)

    trainer, model, opt, loader = setup()
    assert trainer.load(tmp_path / "r.pt", model=model, optimizer=opt)["epoch"] == 1
    assert epoch(trainer, model, opt, loader) == expected


def test_loader_reshuffles_each_pass_in_one_process() -> None:
    """One process: the whole data set each pass, in a new order each time."""
    trainer = ParallelTrainer(config={"device": "cpu"})
    loader = trainer.loader(TensorDataset(torch.arange(20)), batch_size=6)
    first = [int(i) for (b,) in loader for i in b]
    second = [int(i) for (b,) in loader for i in b]
    assert sorted(first) == sorted(second) == list(range(20))
    assert first != second


def test_seed_get_loader_and_side_effects_in_one_process(tmp_path: Path) -> None:
    """Seed calls in one process: no sampler, a shuffled loader; write_log and call_func run."""
    trainer = Parallel_Trainer(False, SeedConfig())
    data = TensorDataset(torch.arange(10))
    assert trainer.dataset_parallel(data) is None
    loader = trainer.get_loader(data, 0, 4, 0, None)
    assert sorted(int(i) for (b,) in loader for i in b) == list(range(10))
    with open(tmp_path / "log.txt", "a") as log_file:
        trainer.write_log(log_file, "hello")
    assert (tmp_path / "log.txt").read_text() == "hello\n"
    assert trainer.call_func(lambda x: x * 2, 21) == 42
    model = nn.Linear(2, 2)
    assert trainer.get_model(trainer.model_parallel(model)) is model


def test_model_parallel_does_not_force_train_mode() -> None:
    """The seed called model.train() on every model; the trainer leaves the mode alone."""
    trainer = ParallelTrainer(config={"device": "cpu"})
    model = small_model().eval()
    assert trainer.model_parallel(model).training is False


def test_plain_progress_lines_off_a_tty(capsys: pytest.CaptureFixture[str]) -> None:
    """Captured output is not a TTY: a few plain lines and a final one, nothing else."""
    trainer = ParallelTrainer(config={"device": "cpu"})
    assert list(trainer.progress(range(20), desc="train")) == list(range(20))
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("train: 20/20 (100%)")
    assert 2 <= len(lines) <= 5
    trainer.print("only rank zero")
    assert capsys.readouterr().out == "only rank zero\n"


def test_close_is_idempotent_and_a_context_manager() -> None:
    """close() twice is fine; ``with`` returns the trainer."""
    with ParallelTrainer(config={"device": "cpu"}) as trainer:
        assert isinstance(trainer, ParallelTrainer)
    trainer.close()
    trainer.close()


def test_progress_file_and_metrics_from_the_trainer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """trainer.progress reports to HANDYJOBS_PROGRESS_FILE; log_metrics takes tensors."""
    monkeypatch.setenv("HANDYJOBS_PROGRESS_FILE", str(tmp_path / "progress.json"))
    monkeypatch.setenv("HANDYJOBS_METRICS_FILE", str(tmp_path / "metrics.jsonl"))
    monkeypatch.setenv("HANDYJOBS_RUN", "2")
    with ParallelTrainer(config={"device": "cpu"}) as trainer:
        for _ in trainer.progress(range(12), desc="epoch 1"):
            pass
        trainer.log_metrics({"loss": torch.tensor(0.5), "lr": 1e-3}, step=12)
    report = json.loads((tmp_path / "progress.json").read_text())
    assert (report["desc"], report["done"], report["total"]) == ("epoch 1", 12, 12)
    logged = curves.read_samples(tmp_path / "metrics.jsonl")
    assert {k: [(s.step, s.value, s.run) for s in v] for k, v in logged.items()} == {
        "loss": [(12, 0.5, 2)],
        "lr": [(12, 1e-3, 2)],
    }
    assert "epoch 1: 12/12" in capsys.readouterr().out


# -- the process state alone --------------------------------------------------------------------


def test_process_state_alone() -> None:
    """ProcessState without the trainer: ranks, device, main_process_first, close."""
    with ProcessState(config={"device": "cpu"}) as alone:
        assert (alone.rank, alone.world_size, alone.is_main, alone.distributed) == (
            0,
            1,
            True,
            False,
        )
        assert alone.device == torch.device("cpu")
        ran = []
        with alone.main_process_first():
            ran.append(alone.rank)
        with alone.main_process_first(local=True):
            ran.append(alone.local_rank)
        assert ran == [0, 0]
    assert alone.closed
    trainer = ParallelTrainer(config={"device": "cpu"})
    assert isinstance(trainer.state, ProcessState) and trainer.state.device == trainer.device


def test_nccl_needs_a_cpu_side_group() -> None:
    """Object and checkpoint traffic needs gloo: nccl gets a side group, gloo uses its own."""
    assert state.needs_cpu_group("nccl")
    assert not state.needs_cpu_group("gloo")
    assert not state.needs_cpu_group("cpu:gloo,cuda:nccl")
    assert not state.needs_cpu_group(None)


# -- device decisions (what a GPU machine decides, checked here with plain values) -------------


@pytest.mark.parametrize(
    ("requested", "launched", "local_rank", "count", "expected"),
    [
        (None, False, 0, 1, 0),
        (1, False, 0, 2, 1),
        (0, True, 1, 2, 1),  # under torchrun the local rank wins over the seed's 'cuda:0'
        (None, True, 3, 4, 3),
    ],
)
def test_cuda_index_choices(
    requested: int | None, launched: bool, local_rank: int, count: int, expected: int
) -> None:
    """cuda:N in one process; cuda:LOCAL_RANK under torchrun."""
    index = devices.cuda_index(
        requested,
        launched=launched,
        local_rank=local_rank,
        count=count,
        source="config.device",
        visible="'0,1'",
    )
    assert index == expected


def test_cuda_index_beyond_the_visible_gpus_is_a_trainer_error() -> None:
    """cuda:1 with one GPU visible: a TrainerError naming what is visible, not a CUDA crash."""
    with pytest.raises(TrainerError) as info:
        devices.cuda_index(
            1, launched=False, local_rank=0, count=1, source="config.device", visible="'3'"
        )
    message = str(info.value)
    assert "'cuda:1'" in message and "sees 1 GPU(s)" in message
    assert "CUDA_VISIBLE_DEVICES='3'" in message and "use cuda:0" in message
    with pytest.raises(TrainerError, match=r"cuda:2 for local rank 2.*only 2 GPU"):
        devices.cuda_index(
            None, launched=True, local_rank=2, count=2, source="config.device", visible="unset"
        )


def test_booked_but_unusable_messages() -> None:
    """The message names the booking, torch's CUDA build, what is visible, and a fix."""
    cpu_wheel = devices.booked_but_unusable(
        "2,4", torch_version="2.13.0+cpu", cuda_version=None, visible="'2,4'", count=0
    )
    assert "HANDYJOBS_GPU_IDS=2,4" in cpu_wheel and "torch 2.13.0+cpu" in cpu_wheel
    assert "CPU-only build" in cpu_wheel and "--cpu" in cpu_wheel
    too_new = devices.booked_but_unusable(
        "0",
        torch_version="2.13.0+cu130",
        cuda_version="13.0",
        visible="'0'",
        count=0,
        reason="The NVIDIA driver on your system is too old (found version 12020).",
    )
    assert "built for CUDA 13.0" in too_new and "driver on your system is too old" in too_new
    assert "nvidia-smi" in too_new and "torch.cuda.device_count()=0" in too_new
    assert "\n" not in too_new


@pytest.mark.parametrize(
    ("capability", "warns"), [((7, 0), True), ((7, 5), True), ((8, 0), False), ((9, 0), False)]
)
def test_bf16_advice_before_ampere(capability: tuple[int, int], warns: bool) -> None:
    """bf16 on V100 (7.0) or T4 (7.5) is emulated: a warning suggesting fp16; none from 8.0."""
    advice = devices.bf16_advice(capability, "Tesla T4")
    assert (advice is not None) is warns
    if advice is not None:
        assert "fp16" in advice and "Tesla T4" in advice and f"{capability[0]}." in advice


def test_booked_gpus_with_unusable_cuda_fail_at_once(tmp_path: Path) -> None:
    """HANDYJOBS_GPU_IDS set, CUDA unusable: the trainer refuses to train on the CPU silently.

    ``CUDA_VISIBLE_DEVICES=`` hides every GPU (here, and on a GPU machine too), as a CPU-only
    wheel or a CUDA build newer than the driver would.
    """
    done = subprocess.run(
        [sys.executable, "-c", "from handyjobs import ParallelTrainer; ParallelTrainer()"],
        cwd=tmp_path,
        env=child_env(HANDYJOBS_GPU_IDS="0", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode != 0, done.stdout  # before: trained on the CPU without a word
    last = done.stderr.strip().splitlines()[-1]
    assert "TrainerError: handyjobs booked GPU(s) 0" in last, done.stderr
    assert f"torch {torch.__version__}" in last
    assert "CUDA_VISIBLE_DEVICES=''" in last
    expected = "CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
    assert expected in last


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_booked_gpus_and_device_cuda_name_the_booking(monkeypatch: pytest.MonkeyPatch) -> None:
    """config.device='cuda' under a booking, without CUDA: the booking error, not a generic one."""
    monkeypatch.setenv("HANDYJOBS_GPU_IDS", "0,1")
    with pytest.raises(TrainerError, match=r"booked GPU\(s\) 0,1 .*cannot use CUDA"):
        ParallelTrainer(config={"device": "cuda"})


def test_booked_gpus_with_an_explicit_cpu_device_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    """config.device='cpu' under a GPU booking trains on the CPU, saying the GPUs sit idle."""
    monkeypatch.setenv("HANDYJOBS_GPU_IDS", "1")
    with pytest.warns(TrainerWarning, match=r"booked GPU\(s\) 1.*'cpu'"):
        trainer = ParallelTrainer(config={"device": "cpu"})
    assert trainer.device == torch.device("cpu")


# -- stop signals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, (signal.SIGTERM, signal.SIGUSR1)),
        ("SIGTERM,usr2", (signal.SIGTERM, signal.SIGUSR2)),
        (["TERM", int(signal.SIGINT), "SIGTERM"], (signal.SIGTERM, signal.SIGINT)),
        ("SIGUSR1 SIGHUP", (signal.SIGUSR1, signal.SIGHUP)),
        ([], ()),
        ("none", ()),
        (False, ()),
    ],
)
def test_stop_signals_setting(value: Any, expected: tuple[signal.Signals, ...]) -> None:
    """config.stop_signals: names with or without SIG, numbers, lists, strings; off."""
    assert stopping.parse_signals(value) == expected


@pytest.mark.parametrize(("value", "match"), [("SIGFOO", "not a signal"), ("KILL", "cannot")])
def test_bad_stop_signals_are_clear_errors(value: str, match: str) -> None:
    """Unknown names and uncatchable signals are refused at construction."""
    with pytest.raises(TrainerError, match=match):
        ParallelTrainer(config={"device": "cpu", "stop_signals": value})


def test_stop_decision_rules() -> None:
    """Unarmed: default action. Armed: the first is a request, a repeat within the window too
    (torchrun's forwarded copy), a repeat after it takes the default; kinds count apart."""
    listener = stopping.StopListener()
    term, usr1 = int(signal.SIGTERM), int(signal.SIGUSR1)
    assert listener.swallow(term, now=0.0) is False
    assert listener.read() is False  # reading arms
    assert listener.swallow(term, now=10.0) is True
    assert listener.swallow(term, now=10.0 + stopping.REPEAT_WINDOW_S) is True
    assert listener.swallow(term, now=10.1 + stopping.REPEAT_WINDOW_S) is False
    assert listener.swallow(usr1, now=20.0) is True


def test_request_stop_in_one_process() -> None:
    """request_stop() sets should_stop and stop_requested, as a signal would; it stays set."""
    with ParallelTrainer(config={"device": "cpu"}) as trainer:
        assert trainer.should_stop is False and trainer.stop_requested is False
        trainer.request_stop()
        assert trainer.should_stop is True and trainer.stop_requested is True
        assert trainer.should_stop is True


def test_handlers_are_installed_and_given_back(fresh_stop_listener: stopping.StopListener) -> None:
    """The trainer handles SIGTERM and SIGUSR1 while open; close() restores the old ones."""
    before = signal.getsignal(signal.SIGTERM)
    trainer = ParallelTrainer(config={"device": "cpu"})
    assert signal.getsignal(signal.SIGTERM) == fresh_stop_listener._handle
    assert signal.getsignal(signal.SIGUSR1) == fresh_stop_listener._handle
    trainer.close()
    assert signal.getsignal(signal.SIGTERM) == before


def test_stop_handling_can_be_turned_off(fresh_stop_listener: stopping.StopListener) -> None:
    """stop_signals=[]: no handler at all, so SIGTERM keeps its default action."""
    before = signal.getsignal(signal.SIGTERM)
    with ParallelTrainer(config={"device": "cpu", "stop_signals": []}) as trainer:
        assert trainer.should_stop is False
        assert signal.getsignal(signal.SIGTERM) == before
        assert fresh_stop_listener.signals == ()


def test_a_handler_of_the_scripts_own_is_left_alone() -> None:
    """A script that handles SIGTERM itself keeps its handler."""

    def own(signum: int, frame: object) -> None:
        """The script's handler."""

    previous = signal.signal(signal.SIGTERM, own)
    try:
        with ParallelTrainer(config={"device": "cpu"}):
            assert signal.getsignal(signal.SIGTERM) is own
    finally:
        signal.signal(signal.SIGTERM, previous)


def start_stopper(root: Path, name: str, **knobs: str) -> tuple[subprocess.Popen[str], Path]:
    """``worker.py stop`` in one plain process, with HJ_STOP_* knobs."""
    out = root / name
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), "stop", str(out)],
        cwd=out,
        env=child_env(PYTHONPATH=str(REPO), **knobs),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, out


def wait_for_file(path: Path, proc: subprocess.Popen[str], timeout: float = 90) -> None:
    """Poll until ``path`` exists; fail with the process's output if it dies first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"{path.name} never appeared (exit {proc.returncode}):\n{out}\n{err}")
        time.sleep(0.05)


def test_stop_signals_in_one_process(tmp_path: Path) -> None:
    """Real signals to real scripts, all four at once (each start costs a torch import).

    unaware: never reads should_stop, so SIGTERM kills it at once, as without a trainer.
    usr1: Slurm's warning signal sets should_stop; the loop saves and the script exits 0.
    twice: a second SIGTERM after the repeat window (0 s here) takes the default action.
    """
    cases = {
        "unaware": ({"HJ_STOP_READ": "0"}, [signal.SIGTERM]),
        "usr1": ({}, [signal.SIGUSR1]),
        "twice": ({"HJ_STOP_STUBBORN": "1", "HJ_STOP_WINDOW": "0"}, [signal.SIGTERM] * 2),
    }
    started = {name: start_stopper(tmp_path, name, **knobs) for name, (knobs, _) in cases.items()}
    for name, (proc, out) in started.items():
        wait_for_file(out / "stop_ready_rank0", proc)
        first, *more = cases[name][1]
        proc.send_signal(first)
        for again in more:
            wait_for_file(out / "stop_flagged_rank0", proc)
            proc.send_signal(again)
    finished = {
        name: (proc.communicate(timeout=60), proc.returncode) for name, (proc, _) in started.items()
    }

    for name in ("unaware", "twice"):
        (_, err), code = finished[name]
        assert code == -signal.SIGTERM, f"{name}: exit {code}\n{err}"
        assert not (tmp_path / name / "stop.pt").exists()
    (_, err), code = finished["usr1"]
    assert code == 0, err
    assert "got SIGUSR1; trainer.should_stop is now True" in err
    result = json.loads((tmp_path / "usr1" / "stop_rank0.json").read_text())
    assert result["signal"] == "SIGUSR1"
    saved = torch.load(tmp_path / "usr1" / "stop.pt", weights_only=True)
    assert saved["step"] == result["step"] > 0
    assert "got SIGTERM" in finished["twice"][0][1]  # the first one was a request


# -- examples in one process -------------------------------------------------------------------


def test_seed_style_example_runs_unchanged(tmp_path: Path) -> None:
    """``python examples/seed_style.py``: the seed README's usage, one process."""
    done = run_python([str(REPO / "examples" / "seed_style.py")], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "done: 3 epochs" in done.stdout
    assert "(one process" in done.stdout
    assert (tmp_path / "runs" / "seed_style" / "model.pt").exists()


def test_train_example_runs_with_no_arguments(tmp_path: Path) -> None:
    """``python examples/train.py``: progress lines, a final line, a metrics line per epoch."""
    done = run_python([str(REPO / "examples" / "train.py")], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "epoch 1/5:" in done.stdout
    assert "done: epoch 5" in done.stdout
    logged = curves.read(tmp_path / "metrics.jsonl")  # log_metrics, outside a job
    steps = [x for x, _ in logged["val_acc"]]  # one line per epoch
    assert len(steps) == 5 and all(x == int(x) for x in steps) and steps == sorted(steps)
    assert len(logged["loss"]) > 5  # and a training-loss curve
    best = {s.metric: s for s in curves.summarise(logged)}["val_acc"]
    assert best.higher_is_better and best.best > 0.5


# -- GPU --------------------------------------------------------------------------------------


def need_gpu() -> None:
    """Skip, saying why, where torch sees no NVIDIA GPU."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")


@pytest.mark.gpu
def test_gpu_device_and_precision() -> None:
    """On a GPU: cuda:0 by default, bf16 autocast, an fp16 step that moves finite weights."""
    need_gpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrainerWarning)  # bf16 before Ampere: its own test
        trainer = ParallelTrainer(config={"precision": "bf16"})
    assert trainer.device == torch.device("cuda", 0)
    ones = torch.ones(4, 4, device=trainer.device)
    with trainer.autocast():
        assert (ones @ ones).dtype == torch.bfloat16
    fp16 = ParallelTrainer(config={"precision": "fp16"})
    assert fp16.scaler is not None
    model = fp16.model_parallel(nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    with fp16.autocast():
        out = model(ones)
    assert out.dtype == torch.float16
    # Small, so the scaled gradients (x 65536) fit in float16 and the step is not skipped.
    fp16.backward(out.float().sum() * 1e-3)
    fp16.step(optimizer)
    after = list(model.parameters())
    assert all(p.device == fp16.device and torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(p.grad is None for p in after)
    assert math.isfinite(fp16.scaler.get_scale())


@pytest.mark.gpu
def test_gpu_index_is_checked_and_made_current() -> None:
    """cuda:N beyond the visible GPUs is a TrainerError; a valid one becomes current."""
    need_gpu()
    count = torch.cuda.device_count()
    with pytest.raises(TrainerError, match=f"sees {count} GPU"):
        ParallelTrainer(config={"device": f"cuda:{count}"})
    try:
        last = ParallelTrainer(config={"device": f"cuda:{count - 1}"})
        assert last.device == torch.device("cuda", count - 1)
        assert torch.cuda.current_device() == count - 1
    finally:
        torch.cuda.set_device(0)


@pytest.mark.gpu
def test_gpu_bf16_warns_exactly_before_ampere() -> None:
    """bf16 warns (suggesting fp16) on a GPU below compute capability 8.0, and only there."""
    need_gpu()
    capability = torch.cuda.get_device_capability(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ParallelTrainer(config={"precision": "bf16"})
    advice = [w for w in caught if "emulate bfloat16" in str(w.message)]
    assert len(advice) == (1 if capability < (8, 0) else 0)
