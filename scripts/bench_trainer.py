"""Benchmark ParallelTrainer against a hand-written DDP loop (and Accelerate / Fabric if installed).

Each run is its own torchrun launch; the implementations alternate within a round, so slow
drifts of a shared machine hit all of them alike. Prints samples/s per run, the medians and
each median's ratio to the hand-written loop.

    python scripts/bench_trainer.py                         # 2 gloo processes, 1 thread each
    python scripts/bench_trainer.py --runs 5 --steps 300
    python scripts/bench_trainer.py --backend nccl --device cuda --nproc 2   # on GPUs

On GPUs every implementation trains on cuda:LOCAL_RANK over NCCL (Accelerate and Fabric choose
nccl themselves on CUDA); timings synchronise the GPU before reading the clock.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
IMPLS = ("handwritten", "trainer", "accelerate", "fabric")


def parse_args() -> argparse.Namespace:
    """Options shared by the driver and the workers it launches."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each implementation")
    parser.add_argument("--steps", type=int, default=150, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument(
        "--backend",
        default="gloo",
        choices=("gloo", "nccl"),
        help="for the hand-written loop and ParallelTrainer (Accelerate and Fabric pick their "
        "own: nccl on cuda, gloo on cpu)",
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--impls",
        default=",".join(IMPLS),
        help="comma-separated subset of " + ", ".join(IMPLS) + "; 'handwritten:OPTS' adds a "
        "variant of the hand-written loop with DDP options separated by '+', e.g. "
        "handwritten:gradient_as_bucket_view=1+static_graph=1 (set_to_none=0 zeroes gradients "
        "in place instead of setting them to None); 'trainer:OPTS' sets trainer config "
        "the same way",
    )
    parser.add_argument("--ddp", default="", help=argparse.SUPPRESS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


# -- the workload ----------------------------------------------------------------------------


def build(device: Any) -> tuple[Any, Any, Any]:
    """The MLP (about 1.6M parameters), its optimizer, and a synthetic data set."""
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(256, 1024),
        nn.ReLU(),
        nn.Linear(1024, 1024),
        nn.ReLU(),
        nn.Linear(1024, 256),
    ).to(device)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(8192, 256, generator=generator)
    y = torch.randint(0, 256, (8192,), generator=generator)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), TensorDataset(x, y)


def endless(loader: Any) -> Iterator[Any]:
    """Batches forever, one pass after another."""
    while True:
        yield from loader


def timed(steps: int, warmup: int, step: Callable[[], None], sync: Callable[[], None]) -> float:
    """Seconds for ``steps`` steps after ``warmup`` untimed ones, ranks aligned at both ends."""
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return time.perf_counter() - start


def ddp_options(text: str) -> dict[str, Any]:
    """Parse ``name=value,...`` into DDP keyword arguments."""
    options: dict[str, Any] = {}
    for item in filter(None, text.split("+")):
        name, _, value = item.partition("=")
        options[name] = float(value) if name == "bucket_cap_mb" else value not in ("0", "false")
    return options


def run_handwritten(args: argparse.Namespace) -> float:
    """The loop people write by hand from the PyTorch DDP tutorial."""
    import torch
    import torch.distributed as dist
    from torch.nn import functional
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler

    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device(args.device, local_rank) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(args.backend)
    torch.set_num_threads(args.threads)
    model, optimizer, data = build(device)
    device_ids = [local_rank] if device.type == "cuda" else None
    options = ddp_options(args.ddp)
    set_to_none = options.pop("set_to_none", True)
    model = DistributedDataParallel(model, device_ids=device_ids, **options)
    loader = DataLoader(data, args.batch_size, sampler=DistributedSampler(data))
    batches = endless(loader)

    def step() -> None:
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=set_to_none)
        loss = functional.cross_entropy(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]  # unannotated in torch 2.13
        optimizer.step()

    seconds = timed(args.steps, args.warmup, step, lambda: sync_all(device))
    dist.destroy_process_group()
    return seconds


def run_trainer(args: argparse.Namespace) -> float:
    """The same loop through ParallelTrainer."""
    import torch
    from torch.nn import functional

    from handyjobs import ParallelTrainer

    config = {"device": args.device, "backend": args.backend, **ddp_options(args.ddp)}
    with ParallelTrainer(config=config) as trainer:
        torch.set_num_threads(args.threads)
        model, optimizer, data = build(trainer.device)
        model = trainer.model_parallel(model)
        batches = endless(trainer.loader(data, args.batch_size))

        def step() -> None:
            x, y = trainer.to_device(next(batches))
            loss = functional.cross_entropy(model(x), y)
            trainer.backward(loss)
            trainer.step(optimizer)

        return timed(args.steps, args.warmup, step, lambda: sync_all(trainer.device))


def framework_step(
    batches: Iterator[Any], model: Any, optimizer: Any, backward: Callable[[Any], None]
) -> Callable[[], None]:
    """One step of the loop for a framework that prepared model, optimizer and data itself."""
    from torch.nn import functional

    def step() -> None:
        x, y = next(batches)
        optimizer.zero_grad()
        loss = functional.cross_entropy(model(x), y)
        backward(loss)
        optimizer.step()

    return step


def run_accelerate(args: argparse.Namespace) -> float:
    """The same loop through Hugging Face Accelerate."""
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    accelerator = Accelerator(cpu=args.device == "cpu")
    torch.set_num_threads(args.threads)
    model, optimizer, data = build(accelerator.device)
    loader = DataLoader(data, args.batch_size, shuffle=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    batches = endless(loader)

    step = framework_step(batches, model, optimizer, accelerator.backward)
    seconds = timed(args.steps, args.warmup, step, lambda: sync_all(accelerator.device))
    accelerator.end_training()
    return seconds


def run_fabric(args: argparse.Namespace) -> float:
    """The same loop through Lightning Fabric."""
    import torch
    from torch.utils.data import DataLoader

    try:
        from lightning.fabric import Fabric
    except ImportError:
        from lightning_fabric import Fabric

    devices = int(os.environ["LOCAL_WORLD_SIZE"])
    fabric = Fabric(accelerator=args.device, devices=devices, strategy="ddp")
    fabric.launch()
    torch.set_num_threads(args.threads)
    model, optimizer, data = build(fabric.device)
    model, optimizer = fabric.setup(model, optimizer)
    batches = endless(fabric.setup_dataloaders(DataLoader(data, args.batch_size, shuffle=True)))

    step = framework_step(batches, model, optimizer, fabric.backward)
    seconds = timed(args.steps, args.warmup, step, lambda: sync_all(fabric.device))
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
    return seconds


def sync_all(device: Any) -> None:
    """Finish queued GPU work and line the ranks up, so timings cover the same steps."""
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dist.barrier()


WORKERS: dict[str, Callable[[argparse.Namespace], float]] = {
    "handwritten": run_handwritten,
    "trainer": run_trainer,
    "accelerate": run_accelerate,
    "fabric": run_fabric,
}


def worker(args: argparse.Namespace) -> None:
    """Inside torchrun: run one implementation; rank 0 prints one JSON line."""
    seconds = WORKERS[args.worker](args)
    if os.environ.get("RANK", "0") == "0":
        samples = args.steps * args.batch_size * int(os.environ.get("WORLD_SIZE", "1"))
        print("BENCH " + json.dumps({"seconds": seconds, "samples_per_s": samples / seconds}))


# -- the driver ------------------------------------------------------------------------------


def available(impl: str) -> bool:
    """Whether the library an implementation needs is installed."""
    impl = impl.partition(":")[0]
    if impl == "accelerate":
        return find_spec("accelerate") is not None
    if impl == "fabric":
        return find_spec("lightning") is not None or find_spec("lightning_fabric") is not None
    return True


def launch(impl: str, args: argparse.Namespace) -> float:
    """One torchrun launch of one implementation; returns its samples/s."""
    base, _, ddp = impl.partition(":")
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(args.nproc),
        str(Path(__file__).resolve()),
        "--worker",
        base,
        f"--ddp={ddp}",
        *(
            f"--{name.replace('_', '-')}={value}"
            for name, value in vars(args).items()
            # --nproc would be taken by torchrun itself (a prefix of --nproc-per-node).
            if name not in ("worker", "runs", "impls", "nproc", "ddp")
        ),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH "):
            return float(json.loads(line[len("BENCH ") :])["samples_per_s"])
    raise SystemExit(f"{impl} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")


def check_devices(args: argparse.Namespace) -> str | None:
    """Why this machine cannot run the benchmark as asked (one line), or None when it can."""
    if args.backend == "nccl" and args.device != "cuda":
        return "--backend nccl runs on GPUs only: add --device cuda (or use --backend gloo)"
    if args.device != "cuda":
        return None
    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return (
            f"--device cuda, but torch {torch.__version__} ({build}) sees no GPU here; "
            "run it on a machine with NVIDIA GPUs, or use --device cpu --backend gloo"
        )
    count = torch.cuda.device_count()
    if args.nproc > count:
        return (
            f"--nproc {args.nproc} needs {args.nproc} GPUs, this machine shows {count} "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
            f"use --nproc {count}"
        )
    return None


def main() -> None:
    """Alternate the implementations for ``--runs`` rounds, then print the figures."""
    args = parse_args()
    if args.worker:
        worker(args)
        return
    problem = check_devices(args)
    if problem:
        raise SystemExit(f"bench_trainer: {problem}")
    wanted = [i.strip() for i in args.impls.split(",") if i.strip()]
    unknown = sorted({i.partition(":")[0] for i in wanted} - set(IMPLS))
    if unknown:
        raise SystemExit(f"unknown implementation(s): {', '.join(unknown)}")
    impls = [i for i in wanted if available(i)]
    skipped = [i for i in wanted if i not in impls]
    print(
        f"{args.nproc} x {args.backend}/{args.device}, {args.threads} thread(s) each, batch "
        f"{args.batch_size}/process, {args.steps} timed steps, {args.runs} runs"
        + (f"; not installed: {', '.join(skipped)}" if skipped else ""),
        flush=True,
    )
    rates: dict[str, list[float]] = {impl: [] for impl in impls}
    for round_index in range(args.runs):
        # Rotate the order each round so no implementation always runs first or last.
        order = impls[round_index % len(impls) :] + impls[: round_index % len(impls)]
        for impl in order:
            rates[impl].append(launch(impl, args))
            print(
                f"  run {round_index + 1} {impl:24s} {rates[impl][-1]:9.1f} samples/s", flush=True
            )
    base = statistics.median(rates["handwritten"]) if rates.get("handwritten") else None
    print(f"\n{'implementation':24s} {'median samples/s':>17s} {'vs hand-written':>16s}  runs")
    for impl, values in rates.items():
        median = statistics.median(values)
        ratio = f"{median / base:.3f}x" if base else "-"
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"{impl:24s} {median:17.1f} {ratio:>16s}  {runs}")


if __name__ == "__main__":
    main()
