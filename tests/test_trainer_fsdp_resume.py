"""ParallelTrainer 2 under real torchrun (2 gloo processes on CPU): resume anywhere, metrics
without duplicates, iterable datasets split by rank, per-model DDP options, FSDP2 against DDP
with sharded and full checkpoints (a sharded one of 2 processes loaded into 1), and a
mid-epoch resume through the real ``handyjobs stop`` and ``handyjobs restart``."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import Sandbox, log_of, wait_state, wait_until

from handyjobs.trainer import ParallelTrainer, TrainerWarning

REPO = Path(__file__).resolve().parents[1]
SHARDING = REPO / "tests" / "trainer_scripts" / "sharding.py"
RESUME = REPO / "tests" / "trainer_scripts" / "resume.py"
SAVE_AT = 14  # resume.SAVE_AT: a synced micro-step in the middle of the second epoch

#: Variables a launcher sets; a test run inside a job must not hand them to its own launches.
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "HANDYJOBS_DEVICE")


@dataclass
class Launch:
    """What one torchrun left: its output folder and each rank's result."""

    out: Path
    ranks: list[dict[str, Any]]


def torchrun(script: Path, mode: str, out: Path, timeout: float = 240) -> list[dict[str, Any]]:
    """Run ``script MODE OUT`` on 2 gloo processes; on failure show what the workers printed."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", str(script), mode, str(out)]  # fmt: skip
    proc = subprocess.Popen(
        argv,
        cwd=out,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun overran {timeout}s:\n{output[-6000:]}")
    assert proc.returncode == 0, output[-6000:]
    return [json.loads((out / f"{mode}_rank{r}.json").read_text()) for r in range(2)]


def script() -> Any:
    """The launched script as a module: its model, so that parameter names match."""
    spec = importlib.util.spec_from_file_location("sharding", SHARDING)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- FSDP2 -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory: pytest.TempPathFactory) -> Launch:
    """One launch with every FSDP check (each torchrun start costs seconds)."""
    out = tmp_path_factory.mktemp("fsdp")
    return Launch(out, torchrun(SHARDING, "fsdp", out))


def test_fsdp_trains_like_ddp(fsdp: Launch) -> None:
    """The same model, data and accumulation under DDP and under FSDP: the same losses."""
    for rank in fsdp.ranks:
        ddp, sharded = rank["against_ddp"]["ddp"], rank["against_ddp"]["fsdp"]
        assert len(ddp) == len(sharded) == 16
        assert max(abs(a - b) for a, b in zip(ddp, sharded, strict=True)) <= 1e-6


def test_fsdp_checkpoint_round_trip_mid_epoch(fsdp: Launch) -> None:
    """Saved mid-epoch as a sharded folder (each rank its file) and as one full file; fresh
    FSDP trainers resume from either and repeat the uninterrupted run's losses exactly."""
    for rank in fsdp.ranks:
        trip = rank["round_trip"]
        assert trip["sharded_type"].startswith("FSDP")
        assert trip["files"] == [".metadata", "__0_0.distcp", "__1_0.distcp", "handyjobs.pt"]
        assert len(trip["expected"]) == 4
        assert trip["sharded"] == trip["expected"]
        assert trip["full.pt"] == trip["expected"]
    leftovers = [p.name for p in fsdp.out.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_fsdp_by_hand_survives_model_parallel_and_saves_whole(fsdp: Launch) -> None:
    """fully_shard applied by the script: model_parallel leaves it alone (it crashed in DDP);
    save writes a sharded folder that loads back, or (sharded=False) every parameter whole in
    one file, not rank 0's shard alone."""
    for rank in fsdp.ranks:
        assert rank["by_hand"] == {"model_parallel_kept_it": True, "reloaded_equal": True}
    assert (fsdp.out / "by_hand" / "__1_0.distcp").is_file()
    saved = torch.load(fsdp.out / "by_hand.pt", weights_only=True)["model"]
    whole = script().make_model().state_dict()
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in whole.items()}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_fsdp_mixed_precision(fsdp: Launch, precision: str) -> None:
    """bf16 / fp16 through FSDP2's policy: fp32 parameters kept, finite losses; fp16 uses the
    sharded grad scaler, whose skipped step both ranks report alike."""
    first, second = (rank[precision] for rank in fsdp.ranks)
    assert first == second
    assert first["param_dtypes"] == ["torch.float32"] and first["finite"]
    assert sum(first["stepped"]) >= 6
    assert first["scaler"] == ("ShardedGradScaler" if precision == "fp16" else None)


def test_sharded_checkpoint_of_two_processes_loads_into_one(
    fsdp: Launch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder 2 FSDP processes wrote loads into a single process (DCP reshards) and holds
    what the full export holds: the same weights and Adam moments."""
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    sharding = script()
    with ParallelTrainer(config={"device": "cpu"}, strategy="fsdp") as trainer:
        model = trainer.model_parallel(sharding.make_model(), policy={sharding.Block})
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        with pytest.warns(TrainerWarning, match="saved by 2 process"):
            saved = trainer.load(fsdp.out / "sharded", model=model, optimizer=optimizer)
    full = torch.load(fsdp.out / "full.pt", weights_only=True)
    assert (saved["epoch"], saved["micro"]) == (1, 12)
    weights = model.state_dict()
    assert weights.keys() == full["model"].keys()
    assert all(torch.equal(weights[k], full["model"][k]) for k in weights)
    moments = optimizer.state_dict()["state"]
    names = [name for name, _ in model.named_parameters()]
    for index, name in enumerate(names):
        assert torch.equal(moments[index]["exp_avg"], full["optimizer"]["state"][name]["exp_avg"])


# -- resume anywhere ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Launch:
    """One launch with every check of ``resume.py many``."""
    out = tmp_path_factory.mktemp("midepoch")
    return Launch(out, torchrun(RESUME, "many", out))


@pytest.mark.parametrize("precision", ["32", "bf16", "fp16"])
def test_two_processes_resume_mid_epoch_exactly(many: Launch, precision: str) -> None:
    """Saved at the 6th of 8 batches of epoch 2 (dropout, AdamW, warmup + cosine, clipping,
    accumulation over 3): a fresh trainer resumes and repeats every later loss bit for bit."""
    for rank in many.ranks:
        resume = rank["resume"][precision]
        assert resume["saved_epoch"] == 1
        assert len(resume["expected"]) == 3 * 8 - SAVE_AT
        assert resume["resumed"] == resume["expected"]
        assert resume["same_weights"] is True


def test_gather_for_metrics_counts_1001_of_1001(many: Launch) -> None:
    """1001 samples on 2 ranks: the sampler pads to 1002 and gather sees 1002; gather_for_metrics
    sees each sample once, per batch and over the whole pass."""
    for rank in many.ranks:
        metrics = rank["metrics"]
        assert metrics["plain_count"] == 1002
        assert metrics["sum_of_counts"] == 1002  # what all_reduce of counts would say
        assert metrics["per_batch"] == [float(i) for i in range(1001)]
        assert metrics["whole"] == [float(i) for i in range(1001)]
        assert metrics["last_labels"] == 53 + 52  # the last batches: 53 real rows, and 52 + 1


def test_iterable_dataset_is_split_by_rank(many: Launch) -> None:
    """An IterableDataset of 101 items: rank 0 gets the even ones, rank 1 the odd ones and one
    repeat, so both take 51 steps a pass; every item is seen, none twice but the repeat."""
    first, second = (rank["iterable"] for rank in many.ranks)
    assert len(first) == len(second) == 2 * 51
    one_pass = first[:51] + second[:51]
    assert sorted(set(one_pass)) == list(range(101))
    assert first[:51] == list(range(0, 101, 2))


def test_per_model_ddp_options(many: Launch) -> None:
    """model_parallel(model, find_unused_parameters=True) reaches DDP for that model."""
    for rank in many.ranks:
        assert rank["ddp_options"] == {"find_unused": True, "ran": True}


def results(out: Path, name: str) -> list[dict[str, Any]]:
    """Both ranks' ``<name>_rank<R>.json``."""
    return [json.loads((out / f"{name}_rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.timeout(300)
def test_handyjobs_stop_mid_epoch_then_restart_resumes_exactly(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """``handyjobs stop`` reaches the job mid-epoch: every rank sees should_stop at one step and
    saves; ``handyjobs restart`` runs it again, it loads, and its losses are the uninterrupted
    run's from the next batch on."""
    out = tmp_path / "out"
    out.mkdir()
    sandbox.cli("start", str(RESUME), "--cpu", "--nproc", "2", "--name", "mid",
                "--", "restartable", str(out), check=True)  # fmt: skip
    ready = [out / f"ready_rank{r}.json" for r in range(2)]
    wait_until(lambda: all(p.exists() for p in ready), 150, what="both ranks at the stop point")
    sandbox.cli("stop", "mid", check=True)
    record = wait_state(sandbox, "mid", "stopped", "failed", "succeeded", timeout=90)
    assert record["state"] == "stopped", log_of(sandbox, "mid")
    for stopped in results(out, "restartable"):
        assert (stopped["stopped_at"], stopped["epoch"]) == (SAVE_AT, 1)
    sandbox.cli("restart", "mid", check=True)
    record = wait_state(sandbox, "mid", "succeeded", "failed", timeout=150)
    assert record["state"] == "succeeded", log_of(sandbox, "mid")
    for reference, resumed in zip(results(out, "reference"), results(out, "resumed"), strict=True):
        assert (resumed["from"], resumed["to"]) == (SAVE_AT, 3 * 8)
        assert resumed["losses"] == reference["losses"][SAVE_AT:]
