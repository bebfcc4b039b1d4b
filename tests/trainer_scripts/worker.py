"""Training scenarios the trainer tests run under torchrun (or alone); results go to JSON files.

Usage: ``python worker.py MODE OUTDIR`` where MODE is main, single, resume, fail, multinode,
stop or gpu.
Each process writes ``OUTDIR/<mode>_rank<R>.json``; the tests compare and assert on them.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.data import DataLoader, Dataset, TensorDataset

from handyjobs import ParallelTrainer
from handyjobs.trainer import TrainerError, collectives, stopping

N_SAMPLES = 64
FEATURES = 8
BATCH = 4  # per process under DDP; the single-process reference uses 2 * BATCH
EPOCHS = 2


@dataclasses.dataclass
class RunConfig:
    """A dataclass config, one of the three config kinds the trainer accepts."""

    device: str = "cpu"
    n_gpus: int = 3  # deliberately wrong for 2 processes: the trainer must warn, naming both
    backend: str | None = None
    init_timeout: float = 120.0


def make_data(seed: int = 1234) -> TensorDataset:
    """A fixed regression data set, the same in every process."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N_SAMPLES, FEATURES, generator=gen)
    y = x @ torch.randn(FEATURES, 1, generator=gen) + 0.1 * torch.randn(N_SAMPLES, 1, generator=gen)
    return TensorDataset(x, y)


def make_model(dropout: float = 0.0) -> nn.Module:
    """A small MLP; the caller seeds torch first so every process builds the same one."""
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 1))


def flat_params(model: nn.Module) -> list[float]:
    """All parameters as one list of floats, for JSON."""
    return torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()


def train_plain(trainer: ParallelTrainer, batch: int) -> nn.Module:
    """EPOCHS of SGD through trainer.loader / backward / step; returns the wrapped model."""
    trainer.seed_everything(0)
    model = trainer.model_parallel(make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = trainer.loader(make_data(), batch_size=batch)
    for _ in range(EPOCHS):
        for x, y in loader:
            x, y = trainer.to_device((x, y))
            loss = nn.functional.mse_loss(model(x), y)
            trainer.backward(loss)
            trainer.step(optimizer)
    return model


def check_accumulate(trainer: ParallelTrainer) -> dict[str, Any]:
    """accumulate(model, 2) with batch b against no accumulation with batch 2b."""
    grads_differ_after_micro: list[bool] = []
    grads_equal_after_sync: list[bool] = []

    def local_grads(model: nn.Module) -> torch.Tensor:
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    trainer.seed_everything(0)
    acc_model = trainer.model_parallel(make_model())
    acc_opt = torch.optim.SGD(acc_model.parameters(), lr=0.05)
    acc_loader = trainer.loader(make_data(), batch_size=BATCH, seed=7)
    for _ in range(EPOCHS):
        for x, y in acc_loader:
            with trainer.accumulate(acc_model, 2) as sync:
                trainer.backward(nn.functional.mse_loss(acc_model(x), y))
            grads = trainer.gather(local_grads(acc_model).unsqueeze(0))
            same = bool(torch.equal(grads[0], grads[-1]))
            if sync:
                grads_equal_after_sync.append(same)
                trainer.step(acc_opt)
            else:
                grads_differ_after_micro.append(not same)

    trainer.seed_everything(0)
    big_model = trainer.model_parallel(make_model())
    big_opt = torch.optim.SGD(big_model.parameters(), lr=0.05)
    big_loader = trainer.loader(make_data(), batch_size=2 * BATCH, seed=7)
    for _ in range(EPOCHS):
        for x, y in big_loader:
            trainer.backward(nn.functional.mse_loss(big_model(x), y))
            trainer.step(big_opt)
    diff = (torch.tensor(flat_params(acc_model)) - torch.tensor(flat_params(big_model))).abs().max()
    return {
        "max_abs_diff": float(diff),
        "micro_steps_unsynced": grads_differ_after_micro,
        "final_steps_synced": grads_equal_after_sync,
    }


class IndexSet(Dataset[int]):
    """Sample i is the integer i, so the loader's order is visible."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


def check_sampling(trainer: ParallelTrainer, epochs: int = 3) -> list[list[list[int]]]:
    """Per epoch, every rank's indices in loader order (no set_epoch call anywhere)."""
    loader = trainer.loader(IndexSet(40), batch_size=3)
    per_epoch = []
    for _ in range(epochs):
        mine = [int(i) for batch in loader for i in batch]
        per_epoch.append(trainer.gather(mine))
    return per_epoch


def check_collectives(trainer: ParallelTrainer) -> dict[str, Any]:
    """all_reduce, gather and broadcast on numbers, tensors and objects."""
    r = trainer.rank
    reduced = {op: trainer.all_reduce(r + 1, op) for op in ("mean", "sum", "max", "min")}
    tensor_mean = trainer.all_reduce(torch.tensor([float(r), 10.0 * r]))
    uneven = trainer.gather(torch.arange(r + 2))  # ranks hold tensors of different lengths
    objects = trainer.gather({"rank": r})
    sent = trainer.broadcast({"from": r})
    sent_tensor = trainer.broadcast(torch.full((2,), float(r + 5)))
    return {
        "reduced": reduced,
        "reduced_types": {op: type(v).__name__ for op, v in reduced.items()},
        "tensor_mean": tensor_mean.tolist(),
        "uneven": uneven.tolist(),
        "objects": objects,
        "broadcast": sent,
        "broadcast_tensor": sent_tensor.tolist(),
    }


def check_atomic_save(trainer: ParallelTrainer, out: Path) -> int:
    """Save a few MB many times while the test polls the file; returns the saves made."""
    big = nn.Linear(1024, 1024)  # 4 MiB of weights: a write takes long enough to be seen
    count = 25
    for step in range(count):
        trainer.save(out / "atomic.pt", model=big, step=step)
    if trainer.is_main:
        (out / "atomic.done").write_text("done")
    return count


def check_seed_api(trainer: ParallelTrainer, out: Path) -> dict[str, Any]:
    """The seed's calls: get_loader without a sampler, save_model, write_log, call_func."""
    data = make_data()
    orders = []
    for epoch in range(2):
        loader = trainer.get_loader(data, epoch, 4, 0)
        orders.append(trainer.gather([round(float(x[0, 0]), 4) for x, _ in loader]))
    model = trainer.model_parallel(make_model())
    ckpt: dict[str, Any] = {"epoch": 3}
    trainer.save_model(ckpt, model, out / "seed_ckpt.pt")
    with open(out / "seed_log.txt", "a") as log_file:
        trainer.write_log(log_file, f"line from rank {trainer.rank}")
    called = trainer.call_func(lambda a, b: a + b, 2, b=3)
    return {
        "ckpt_after": ckpt,
        "orders": orders,
        "called": called,
        "get_model_is_plain": type(trainer.get_model(model)).__name__,
        "wrapped": type(model).__name__,
    }


def resume_setup(trainer: ParallelTrainer) -> tuple[nn.Module, Any, Any, Any]:
    """Model with dropout, Adam, a scheduler and a shuffling loader, for the resume check."""
    trainer.seed_everything(1)
    model = trainer.model_parallel(make_model(dropout=0.3))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    loader = trainer.loader(make_data(), batch_size=BATCH)
    return model, optimizer, scheduler, loader


def resume_epoch(
    trainer: ParallelTrainer, model: nn.Module, opt: Any, sched: Any, loader: Any
) -> list[float]:
    """One epoch; returns this rank's losses, which depend on data order and dropout masks."""
    losses = []
    for x, y in loader:
        loss = nn.functional.mse_loss(model(x), y)
        trainer.backward(loss)
        trainer.step(opt)
        sched.step()
        losses.append(loss.item())
    return losses


class WorkerSeed(Dataset[int]):
    """Sample i is the torch seed of the DataLoader worker that made it."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        return int(torch.initial_seed())


def check_seeding(trainer: ParallelTrainer) -> dict[str, Any]:
    """seed_everything: torch alike on every rank; python and DataLoader workers per rank."""
    trainer.seed_everything(42)
    init = trainer.gather(flat_params(make_model()))
    python_draw = trainer.gather(random.random())
    loader = trainer.loader(WorkerSeed(), batch_size=2, num_workers=1)
    worker_seeds = trainer.gather(sorted({int(s) for batch in loader for s in batch}))
    return {
        "same_init": init[0] == init[-1],
        "python_differs": python_draw[0] != python_draw[-1],
        "worker_seeds": worker_seeds,
    }


def check_output(trainer: ParallelTrainer) -> str:
    """What print and progress write to stdout on this rank (stdout is not a TTY here)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        trainer.print("hello from print")
        for _ in trainer.progress(range(8), desc="steps"):
            pass
    return buffer.getvalue()


def check_main_process_first(trainer: ParallelTrainer, out: Path) -> bool:
    """Inside main_process_first, the others see what rank 0 wrote in its (slow) turn."""
    marker = out / "first.txt"
    with trainer.main_process_first():
        if trainer.is_main:
            time.sleep(0.3)  # without the ordering, rank 1 would look long before this write
            marker.write_text("rank 0 was here")
        return marker.exists()


def check_stop_agreement(trainer: ParallelTrainer) -> dict[str, Any]:
    """request_stop on the last rank only: should_stop is True on every rank at the same read."""
    before = trainer.should_stop
    if trainer.rank == trainer.world_size - 1:
        trainer.request_stop()
    return {"before": before, "local": trainer.stop_requested, "agreed": trainer.should_stop}


def check_reports(trainer: ParallelTrainer, out: Path) -> dict[str, bool]:
    """progress and log_metrics report from global rank 0 only (each rank names its own file)."""
    rank = trainer.rank
    os.environ["HANDYJOBS_PROGRESS_FILE"] = str(out / f"progress_rank{rank}.json")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            for _ in trainer.progress(range(3), desc="report"):
                pass
    finally:
        del os.environ["HANDYJOBS_PROGRESS_FILE"]
    metrics_file = out / f"metrics_rank{rank}.jsonl"
    trainer.log_metrics({"loss": torch.tensor(0.25), "rank": rank}, step=7, path=metrics_file)
    return {
        "progress": (out / f"progress_rank{rank}.json").exists(),
        "metrics": metrics_file.exists(),
    }


#: Not a multiple of any chunk size used below, so the short last chunk is exercised.
BLOB = bytes(range(256)) * 41 + b"tail"


def check_broadcast_bytes(trainer: ParallelTrainer) -> dict[str, Any]:
    """Rank 0's bytes everywhere in small chunks: over the default group and a gloo side group."""
    state = trainer.state
    mine = BLOB if trainer.is_main else None
    default = collectives.broadcast_bytes(state, mine, chunk_bytes=1000)
    side = dist.new_group(backend="gloo")  # what an nccl job uses for CPU traffic
    over_side = collectives.broadcast_bytes(state, mine, chunk_bytes=4096, group=side)
    dist.destroy_process_group(side)
    return {
        "default": hashlib.sha256(default).hexdigest(),
        "side": hashlib.sha256(over_side).hexdigest(),
        "cpu_group_is_default": state.cpu_group() is None,
    }


def mode_main(out: Path) -> dict[str, Any]:
    """Most checks in one launch, since every torchrun start costs seconds."""
    trainer = ParallelTrainer(config=RunConfig())
    result: dict[str, Any] = {
        "rank": trainer.rank,
        "world_size": trainer.world_size,
        "local_rank": trainer.local_rank,
        "device": str(trainer.device),
        "backend": trainer.backend,
        "synch": trainer.synch,
    }
    model = train_plain(trainer, BATCH)
    trainer.save(out / "equiv_ddp.pt", model=model)
    result["accumulate"] = check_accumulate(trainer)
    result["sampling"] = check_sampling(trainer)
    result["collectives"] = check_collectives(trainer)
    result["seed_api"] = check_seed_api(trainer, out)
    result["atomic_saves"] = check_atomic_save(trainer, out)
    result["seeding"] = check_seeding(trainer)
    result["output"] = check_output(trainer)
    result["first"] = check_main_process_first(trainer, out)
    result["reports"] = check_reports(trainer, out)
    result["chunks"] = check_broadcast_bytes(trainer)

    # A second trainer reuses the process group, with its own loader registry, so the
    # resume run (a fresh process) sees the same loader as its first one.
    second = ParallelTrainer(config={"device": "cpu"})
    model, opt, sched, loader = resume_setup(second)
    resume_epoch(second, model, opt, sched, loader)
    second.save(out / "resume.pt", model=model, optimizer=opt, scheduler=sched, epoch=1)
    result["resume_next_losses"] = resume_epoch(second, model, opt, sched, loader)
    result["resume_final"] = flat_params(model)
    result["stop_agreement"] = check_stop_agreement(second)
    second.close()
    result["group_alive_after_second_close"] = dist.is_initialized()
    trainer.close()
    result["group_alive_after_close"] = dist.is_initialized()
    return result


def mode_single(out: Path) -> dict[str, Any]:
    """The one-process reference: batch 2b through the same trainer calls."""
    with ParallelTrainer(config={"device": "cpu"}) as trainer:
        model = train_plain(trainer, 2 * BATCH)
        trainer.save(out / "equiv_single.pt", model=model)
        return {"rank": trainer.rank, "world_size": trainer.world_size, "synch": trainer.synch}


def mode_resume(out: Path) -> dict[str, Any]:
    """A new run that resumes from resume.pt; it never calls close(), to check the exit hook."""
    rank = os.environ.get("RANK", "0")

    def probe() -> None:
        # Registered before the trainer's hook, so it runs after it (atexit is LIFO).
        (out / f"resume_group_at_exit_rank{rank}").write_text(str(dist.is_initialized()))

    atexit.register(probe)
    trainer = ParallelTrainer(True, {"device": "cpu"})
    model, opt, sched, loader = resume_setup(trainer)
    saved = trainer.load(out / "resume.pt", model=model, optimizer=opt, scheduler=sched)
    losses = resume_epoch(trainer, model, opt, sched, loader)
    return {"epoch": saved["epoch"], "losses": losses, "final": flat_params(model)}


def mode_fail(out: Path) -> dict[str, Any]:
    """Rank 1 raises; rank 0 waits in collectives, which torchrun must not let hang."""
    trainer = ParallelTrainer(config={"device": "cpu", "init_timeout": 600})
    (out / f"fail_started_rank{trainer.rank}").write_text("started")
    if trainer.rank == 1:
        raise RuntimeError("rank 1 fails on purpose")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        trainer.barrier()
    return {}


def mode_multinode(out: Path) -> dict[str, Any]:
    """Save and log into this node's own folder; only the global rank 0 may write there."""
    node_dir = Path(os.environ["NODE_OUT"])
    config = {"device": "cpu", "n_gpus": 2, "init_timeout": 120}
    with ParallelTrainer(None, config) as trainer:
        model = trainer.model_parallel(make_model())
        trainer.save_model({"tag": "seed"}, model, node_dir / "seed_ckpt.pt")
        trainer.save(node_dir / "ckpt.pt", model=model, step=5)
        # Seed style: every rank opens the file, only global rank 0 writes a line.
        with open(node_dir / "seed_log.txt", "a") as log_file:
            trainer.write_log(log_file, f"rank {trainer.rank}")
        trainer.write_log(node_dir / "log.txt", f"rank {trainer.rank}")
        trainer.call_func(lambda: (node_dir / "called.txt").write_text("x"))
        # The checkpoint is on one node's disk only; load must still work on every rank.
        loaded = trainer.load(node_dir / "ckpt.pt", model=model)
        result = {
            "rank": trainer.rank,
            "world_size": trainer.world_size,
            "local_rank": trainer.local_rank,
            "local_world_size": trainer.local_world_size,
            "node_rank": trainer.node_rank,
            "node_dir": str(node_dir),
            "loaded_step": loaded["step"],
        }
    result["group_alive_after_with"] = dist.is_initialized()
    return result


def endless(loader: DataLoader[Any]) -> Iterator[Any]:
    """Batches forever, one pass after another."""
    while True:
        yield from loader


def write_atomically(path: Path, text: str) -> None:
    """Write a small file whole, so a test polling for it never reads half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def mode_stop(out: Path) -> dict[str, Any]:
    """Train until asked to stop, then save and return; knobs come from HJ_STOP_* variables.

    HJ_STOP_READ=0 never reads should_stop (a script unaware of it); HJ_STOP_STUBBORN=1 keeps
    training after should_stop (so a second signal can be sent); HJ_STOP_SIGNALS is
    config.stop_signals; HJ_STOP_WINDOW replaces the repeat window; HJ_STOP_LOADER_WORKERS
    gives the loader worker processes. ``stop_ready_rank<R>`` holds the pid once armed.
    """
    env = os.environ
    if "HJ_STOP_WINDOW" in env:
        stopping.REPEAT_WINDOW_S = float(env["HJ_STOP_WINDOW"])
    config = {"device": "cpu", "init_timeout": 120, "stop_signals": env.get("HJ_STOP_SIGNALS")}
    trainer = ParallelTrainer(config=config)
    read = env.get("HJ_STOP_READ", "1") == "1"
    stubborn = env.get("HJ_STOP_STUBBORN") == "1"
    workers = int(env.get("HJ_STOP_LOADER_WORKERS", "0"))
    trainer.seed_everything(0)
    model = trainer.model_parallel(make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = trainer.loader(
        make_data(), batch_size=BATCH, num_workers=workers, persistent_workers=workers > 0
    )
    batches = endless(loader)
    ready = out / f"stop_ready_rank{trainer.rank}"
    flagged = out / f"stop_flagged_rank{trainer.rank}"
    deadline = time.monotonic() + 90
    step = 0
    while True:
        if read and trainer.should_stop:
            if not stubborn:
                break
            if not flagged.exists():
                write_atomically(flagged, str(step))
        if time.monotonic() > deadline:
            raise RuntimeError("no stop request arrived within 90 s")
        x, y = trainer.to_device(next(batches))
        trainer.backward(nn.functional.mse_loss(model(x), y))
        trainer.step(optimizer)
        step += 1
        if not ready.exists():
            write_atomically(ready, str(os.getpid()))
        time.sleep(0.02)
    trainer.save(out / "stop.pt", model=model, optimizer=optimizer, step=step)
    result = {"step": step, "signal": stopping.listener.requested}
    trainer.close()
    return result


def mode_gpu(out: Path) -> dict[str, Any]:
    """NCCL over 1 or more GPUs: devices, fp16 and bf16, GPU checkpoints, CPU-side traffic."""
    result: dict[str, Any] = {}
    # synch=True: on a machine with one GPU the test runs one process, and it must still
    # make an nccl process group.
    with ParallelTrainer(True, config={"precision": "fp16"}) as trainer:
        result.update(
            rank=trainer.rank,
            local_rank=trainer.local_rank,
            device=str(trainer.device),
            current=torch.cuda.current_device(),
            backend=trainer.backend,
            summed=trainer.all_reduce(torch.ones(2, device=trainer.device), "sum").tolist(),
        )
        torch.manual_seed(0)
        model = trainer.model_parallel(make_model())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        before = flat_params(model)
        x, y = trainer.to_device(make_data()[:8])
        with trainer.autocast():
            out_fp16 = model(x)
            # Small, so the scaled gradients (x 65536) fit in float16 and the step is not
            # skipped as an overflow: the parameters must move.
            loss = nn.functional.mse_loss(out_fp16.float(), y) * 1e-3
        trainer.backward(loss)
        trainer.clip_grad_norm(model, 1.0, optimizer=optimizer)
        trainer.step(optimizer)
        after = flat_params(model)
        assert trainer.scaler is not None
        result["fp16_dtype"] = str(out_fp16.dtype)
        result["scaler"] = True
        result["scale_finite"] = bool(torch.isfinite(torch.tensor(trainer.scaler.get_scale())))
        result["stepped"] = before != after and bool(torch.isfinite(torch.tensor(after)).all())
        trainer.save(out / "gpu.pt", model=model, optimizer=optimizer)

        # A checkpoint saved from the GPU, loaded back on the GPU into fresh objects.
        fresh = trainer.model_parallel(make_model(dropout=0.0))
        fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.01, momentum=0.9)
        trainer.load(out / "gpu.pt", model=fresh, optimizer=fresh_opt)
        result["reloaded_equal"] = flat_params(fresh) == after
        momentum = [s["momentum_buffer"] for s in fresh_opt.state.values()]
        result["momentum_devices"] = sorted({str(m.device) for m in momentum})

        # Checkpoint bytes and stop flags travel through the gloo side group, never the GPU.
        blob = BLOB * 1000  # about 10 MB, in 1 MB chunks
        got = collectives.broadcast_bytes(
            trainer.state, blob if trainer.is_main else None, chunk_bytes=1 << 20
        )
        result["bytes_equal"] = got == blob
        result["cpu_group_is_default"] = trainer.state.cpu_group() is None
        if trainer.rank == trainer.world_size - 1:
            trainer.request_stop()
        result["should_stop"] = trainer.should_stop

        # A PackedSequence moves to the GPU with its batch_sizes left on the CPU.
        packed = pack_padded_sequence(torch.randn(3, 2, 4), torch.tensor([3, 2]))
        moved = trainer.to_device(packed)
        result["packed"] = [str(moved.data.device), str(moved.batch_sizes.device)]
        rnn = nn.GRU(4, 3).to(trainer.device)
        result["packed_rnn_ran"] = rnn(moved)[0].data.shape[0] == 5

        # A second trainer reuses the live process group; only its precision differs.
        bf16 = ParallelTrainer(True, config={"precision": "bf16"})
        ones = torch.ones(4, 4, device=bf16.device)
        with bf16.autocast():
            result["bf16_dtype"] = str((ones @ ones).dtype)
    return result


def main() -> None:
    """Run one mode and write this process's result."""
    mode, out = sys.argv[1], Path(sys.argv[2])
    modes: dict[str, Callable[[Path], dict[str, Any]]] = {
        "main": mode_main,
        "single": mode_single,
        "resume": mode_resume,
        "fail": mode_fail,
        "multinode": mode_multinode,
        "stop": mode_stop,
        "gpu": mode_gpu,
    }
    try:
        result = modes[mode](out)
    except TrainerError as exc:
        print(f"TrainerError: {exc}", file=sys.stderr)
        raise SystemExit(3) from None
    rank = os.environ.get("RANK", "0")
    buffer = io.StringIO()
    json.dump(result, buffer)
    tmp = out / f".{mode}_rank{rank}.json.tmp"
    tmp.write_text(buffer.getvalue())
    tmp.replace(out / f"{mode}_rank{rank}.json")


if __name__ == "__main__":
    main()
