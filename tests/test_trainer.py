"""ParallelTrainer in one process: config kinds, misuse errors, state, output, examples."""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import handyjobs
from handyjobs.errors import HandyjobsError
from handyjobs.trainer import Parallel_Trainer, ParallelTrainer, TrainerError

REPO = Path(__file__).resolve().parents[1]
LAUNCH_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "HANDYJOBS_DEVICE",
)


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start as a plain process, even when pytest itself runs inside a job."""
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)


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
        trainer.all_reduce("text")  # type: ignore[arg-type]


def test_to_device_walks_nested_containers() -> None:
    """Tensors inside dicts, lists, tuples and named tuples move; other values pass through."""
    Pair = namedtuple("Pair", "a b")
    trainer = ParallelTrainer(config={"device": "cpu"})
    batch = {"x": [torch.ones(2), (torch.zeros(1), "label")], "p": Pair(torch.ones(1), 3)}
    moved = trainer.to_device(batch)
    assert isinstance(moved["p"], Pair) and moved["p"].b == 3
    assert isinstance(moved["x"][1], tuple) and moved["x"][1][1] == "label"
    assert moved["x"][0].device == trainer.device


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
    assert model.weight.grad is not None
    assert torch.allclose(model.weight.grad, torch.full((1, 2), 2.0))


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


# -- examples in one process -------------------------------------------------------------------


def test_seed_style_example_runs_unchanged(tmp_path: Path) -> None:
    """``python examples/seed_style.py``: the seed README's usage, one process."""
    done = run_python([str(REPO / "examples" / "seed_style.py")], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "done: 3 epochs" in done.stdout
    assert "(one process" in done.stdout
    assert (tmp_path / "runs" / "seed_style" / "model.pt").exists()


def test_train_example_runs_with_no_arguments(tmp_path: Path) -> None:
    """``python examples/train.py``: progress lines and a final line."""
    done = run_python([str(REPO / "examples" / "train.py")], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "epoch 1/5:" in done.stdout
    assert "done: epoch 5" in done.stdout


# -- GPU --------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_device_and_precision() -> None:
    """On a GPU: cuda:0 by default, bf16 autocast, fp16 with a scaler."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")
    trainer = ParallelTrainer(config={"precision": "bf16"})
    assert trainer.device == torch.device("cuda", 0)
    ones = torch.ones(4, 4, device=trainer.device)
    with trainer.autocast():
        assert (ones @ ones).dtype == torch.bfloat16
    fp16 = ParallelTrainer(config={"precision": "fp16"})
    assert fp16.scaler is not None
    model = fp16.model_parallel(nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with fp16.autocast():
        out = model(ones)
    assert out.dtype == torch.float16
    fp16.backward(out.float().sum())
    fp16.step(optimizer)
