"""Benchmark ParallelTrainer against hand-written DDP and FSDP2 loops, Accelerate and Fabric.

Each run is its own torchrun launch; the implementations alternate within a round, so slow
drifts of a shared machine hit all of them alike. Prints samples/s per run, the medians and
each median's ratio to the hand-written loop of its kind: DDP implementations against the
hand-written DDP loop, FSDP ones (``fsdp-*``) against the hand-written FSDP2 loop
(``fully_shard`` on each linear layer, then the model). Accelerate and Fabric run when they
are installed and are skipped with a note when not; neither is a dependency of handyjobs.

    python scripts/bench_trainer.py                         # 2 gloo processes, 1 thread each
    python scripts/bench_trainer.py --runs 5 --steps 300
    python scripts/bench_trainer.py --impls fsdp-handwritten,fsdp-trainer
    python scripts/bench_trainer.py --backend nccl --device cuda --nproc 2 --precision bf16

On GPUs every implementation trains on cuda:LOCAL_RANK over NCCL (Accelerate and Fabric choose
nccl themselves on CUDA); timings synchronise the GPU before reading the clock. ``--precision
bf16`` runs the forward pass under bf16 autocast (and FSDP2's bf16 parameter policy for the
FSDP implementations) in every implementation.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
IMPLS = (
    "handwritten",
    "trainer",
    "accelerate",
    "fabric",
    "fsdp-handwritten",
    "fsdp-trainer",
    "fsdp-accelerate",
    "fsdp-fabric",
)


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
    parser.add_argument("--precision", default="32", choices=("32", "bf16"))
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


def worker_device(args: argparse.Namespace) -> Any:
    """cuda:LOCAL_RANK (made current) or the CPU."""
    import torch

    if args.device != "cuda":
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    return device


def autocast(args: argparse.Namespace, device: Any) -> Any:
    """bf16 autocast for the forward pass when --precision bf16, else a no-op."""
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")


def shard_by_hand(model: Any, args: argparse.Namespace, device: Any) -> None:
    """FSDP2 as its tutorial writes it: fully_shard each linear layer, then the model."""
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy()
    if args.precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def run_handwritten(args: argparse.Namespace, fsdp: bool = False) -> float:
    """The loop people write by hand from PyTorch's DDP (or FSDP2) tutorial."""
    import torch
    import torch.distributed as dist
    from torch.nn import functional
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler

    device = worker_device(args)
    dist.init_process_group(args.backend)
    torch.set_num_threads(args.threads)
    model, optimizer, data = build(device)
    options = ddp_options(args.ddp)
    set_to_none = options.pop("set_to_none", True)
    if fsdp:
        shard_by_hand(model, args, device)
        # FSDP2 swaps the parameters for sharded ones: the optimizer comes after it.
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    else:
        device_ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=device_ids, **options)
    loader = DataLoader(data, args.batch_size, sampler=DistributedSampler(data))
    batches = endless(loader)

    def step() -> None:
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=set_to_none)
        with autocast(args, device):
            loss = functional.cross_entropy(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]  # unannotated in torch 2.13
        optimizer.step()

    seconds = timed(args.steps, args.warmup, step, lambda: sync_all(device))
    dist.destroy_process_group()
    return seconds


def run_trainer(args: argparse.Namespace, strategy: str = "ddp") -> float:
    """The same loop through ParallelTrainer."""
    import torch
    from torch import nn
    from torch.nn import functional

    from handyjobs import ParallelTrainer

    config = {"device": args.device, "backend": args.backend, "precision": args.precision}
    config.update(ddp_options(args.ddp))
    with ParallelTrainer(config=config, strategy=strategy) as trainer:
        torch.set_num_threads(args.threads)
        model, optimizer, data = build(trainer.device)
        model = trainer.model_parallel(model, policy={nn.Linear})
        if strategy == "fsdp":
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        batches = endless(trainer.loader(data, args.batch_size))

        def step() -> None:
            x, y = trainer.to_device(next(batches))
            with trainer.autocast():
                loss = functional.cross_entropy(model(x), y)
            trainer.backward(loss)
            trainer.step(optimizer)

        return timed(args.steps, args.warmup, step, lambda: sync_all(trainer.device))


def framework_step(
    batches: Iterator[Any],
    model: Any,
    optimizer: Any,
    backward: Callable[[Any], None],
    forward_context: Callable[[], Any],
) -> Callable[[], None]:
    """One step of the loop for a framework that prepared model, optimizer and data itself."""
    from torch.nn import functional

    def step() -> None:
        x, y = next(batches)
        optimizer.zero_grad()
        with forward_context():
            loss = functional.cross_entropy(model(x), y)
        backward(loss)
        optimizer.step()

    return step


def run_accelerate(args: argparse.Namespace, fsdp: bool = False) -> float:
    """The same loop through Hugging Face Accelerate (its FSDP plugin, version 2, for FSDP)."""
    import torch
    from accelerate import Accelerator, FullyShardedDataParallelPlugin
    from torch.utils.data import DataLoader

    plugin = None
    if fsdp:
        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2,
            auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=["Linear"],
        )
    precision = "bf16" if args.precision == "bf16" else "no"
    accelerator = Accelerator(
        cpu=args.device == "cpu", fsdp_plugin=plugin, mixed_precision=precision
    )
    if fsdp and accelerator.distributed_type != "FSDP":
        # Measured with accelerate 1.16: on CPU it ignores the plugin and trains with DDP.
        raise RuntimeError(
            f"Accelerate does not use FSDP here (distributed type "
            f"{accelerator.distributed_type}); it runs FSDP on GPUs only"
        )
    torch.set_num_threads(args.threads)
    model, optimizer, data = build(accelerator.device)
    loader = DataLoader(data, args.batch_size, shuffle=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    batches = endless(loader)

    step = framework_step(batches, model, optimizer, accelerator.backward, accelerator.autocast)
    seconds = timed(args.steps, args.warmup, step, lambda: sync_all(accelerator.device))
    accelerator.end_training()
    return seconds


def run_fabric(args: argparse.Namespace, fsdp: bool = False) -> float:
    """The same loop through Lightning Fabric (its FSDP strategy for FSDP)."""
    import contextlib

    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    try:
        from lightning.fabric import Fabric
        from lightning.fabric.strategies import FSDPStrategy
    except ImportError:
        from lightning_fabric import Fabric
        from lightning_fabric.strategies import FSDPStrategy

    devices = int(os.environ["LOCAL_WORLD_SIZE"])
    strategy: Any = FSDPStrategy(auto_wrap_policy={nn.Linear}) if fsdp else "ddp"
    precision = "bf16-mixed" if args.precision == "bf16" else "32-true"
    fabric = Fabric(
        accelerator=args.device, devices=devices, strategy=strategy, precision=precision
    )
    fabric.launch()
    torch.set_num_threads(args.threads)
    model, optimizer, data = build(fabric.device)
    model = fabric.setup_module(model)
    if fsdp:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    optimizer = fabric.setup_optimizers(optimizer)
    batches = endless(fabric.setup_dataloaders(DataLoader(data, args.batch_size, shuffle=True)))

    step = framework_step(batches, model, optimizer, fabric.backward, contextlib.nullcontext)
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
    "fsdp-handwritten": lambda args: run_handwritten(args, fsdp=True),
    "fsdp-trainer": lambda args: run_trainer(args, strategy="fsdp"),
    "fsdp-accelerate": lambda args: run_accelerate(args, fsdp=True),
    "fsdp-fabric": lambda args: run_fabric(args, fsdp=True),
}


def worker(args: argparse.Namespace) -> None:
    """Inside torchrun: run one implementation; rank 0 prints one JSON line."""
    seconds = WORKERS[args.worker](args)
    if os.environ.get("RANK", "0") == "0":
        samples = args.steps * args.batch_size * int(os.environ.get("WORLD_SIZE", "1"))
        print("BENCH " + json.dumps({"seconds": seconds, "samples_per_s": samples / seconds}))


# -- the driver ------------------------------------------------------------------------------


def missing_library(impl: str) -> str | None:
    """The library an implementation needs when it is not installed, else None."""
    base = impl.partition(":")[0].removeprefix("fsdp-")
    if base == "accelerate" and find_spec("accelerate") is None:
        return "accelerate"
    if (
        base == "fabric"
        and find_spec("lightning") is None
        and find_spec("lightning_fabric") is None
    ):
        return "lightning"
    return None


def baseline(impl: str) -> str:
    """The hand-written loop an implementation is compared with: DDP's, or FSDP2's."""
    return "fsdp-handwritten" if impl.startswith("fsdp-") else "handwritten"


def launch(impl: str, args: argparse.Namespace) -> float | str:
    """One torchrun launch of one implementation: its samples/s, or why it failed (one line)."""
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
    # The workers' own exception, not torchrun's ChildFailedError report that follows it.
    raised = [
        re.sub(r"^\[rank\d+\]: ", "", line.strip())
        for line in done.stderr.splitlines()
        if re.match(r"\s*(\[rank\d+\]: )?[\w.]*(Error|Exception): ", line)
        and "ChildFailedError" not in line
    ]
    return (raised[0] if raised else f"exit {done.returncode}")[:300]


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
    print(
        f"{args.nproc} x {args.backend}/{args.device}, precision {args.precision}, "
        f"{args.threads} thread(s) each, batch {args.batch_size}/process, {args.steps} timed "
        f"steps, {args.runs} runs",
        flush=True,
    )
    impls = []
    for impl in wanted:
        library = missing_library(impl)
        if library:
            print(f"  skipped: {impl} ({library} not installed)", flush=True)
        else:
            impls.append(impl)
    print_table(run_rounds(impls, args))


def run_rounds(impls: list[str], args: argparse.Namespace) -> dict[str, list[float]]:
    """Each implementation ``--runs`` times, alternating; one that fails is dropped, with why."""
    rates: dict[str, list[float]] = {impl: [] for impl in impls}
    for round_index in range(args.runs):
        # Rotate the order each round so no implementation always runs first or last.
        order = impls[round_index % len(impls) :] + impls[: round_index % len(impls)]
        for impl in order:
            if impl not in rates:
                continue
            found = launch(impl, args)
            if isinstance(found, str):
                print(f"  skipped: {impl} failed: {found}", flush=True)
                del rates[impl]
                continue
            rates[impl].append(found)
            print(f"  run {round_index + 1} {impl:24s} {found:9.1f} samples/s", flush=True)
    return rates


def print_table(rates: dict[str, list[float]]) -> None:
    """Medians, and each one's ratio to the hand-written loop of its kind (DDP or FSDP2)."""
    medians = {impl: statistics.median(values) for impl, values in rates.items() if values}
    print(f"\n{'implementation':24s} {'median samples/s':>17s} {'vs hand-written':>16s}  runs")
    for impl, median in medians.items():
        base = medians.get(baseline(impl.partition(":")[0]))
        ratio = f"{median / base:.3f}x" if base else "-"
        runs = ", ".join(f"{v:.1f}" for v in rates[impl])
        print(f"{impl:24s} {median:17.1f} {ratio:>16s}  {runs}")


if __name__ == "__main__":
    main()
