"""ParallelTrainer: one training script for CPU, one GPU, or DDP over torchrun's processes."""

from __future__ import annotations

import atexit
import builtins
import contextlib
import datetime
import inspect
import io
import os
import random
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

from handyjobs import progress as progress_bars
from handyjobs.errors import HandyjobsError

__all__ = [
    "ParallelTrainer",
    "Parallel_Trainer",
    "TrainerError",
    "TrainerWarning",
]

T = TypeVar("T")

#: Default for ``config.init_timeout`` (seconds): also the timeout of every collective, so it
#: must outlast a long evaluation that only rank 0 runs while the others wait in a barrier.
DEFAULT_INIT_TIMEOUT = 1800.0

#: Default for ``config.close_timeout`` (seconds): how long close() waits for the other ranks,
#: long enough for a final evaluation that only rank 0 runs.
DEFAULT_CLOSE_TIMEOUT = 300.0

#: Key under which ``save`` stores the trainer's own state (RNG, loaders, grad scaler).
_STATE_KEY = "handyjobs"

_PRECISIONS: dict[str, str] = {
    "32": "32",
    "32-true": "32",
    "fp32": "32",
    "float32": "32",
    "bf16": "bf16",
    "bf16-mixed": "bf16",
    "bfloat16": "bf16",
    "16": "fp16",
    "16-mixed": "fp16",
    "fp16": "fp16",
    "float16": "fp16",
}

_REDUCE_OPS = ("mean", "sum", "max", "min")

_DDP_HAS_FORWARD_SYNC = (
    "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
)


class TrainerError(HandyjobsError):
    """A misuse of ParallelTrainer (wrong launch, device or argument); the message says the fix."""


class TrainerWarning(UserWarning):
    """Something in the configuration was overridden by what the launcher actually started."""


def _config_value(config: Any, name: str, default: Any = None) -> Any:
    """Read ``name`` from a dict, a dataclass or any object with attributes; None means unset."""
    if config is None:
        return default
    value = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
    return default if value is None else value


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    """Read an integer set by torchrun, with a clear error when it is malformed."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise TrainerError(f"environment variable {name}={raw!r} is not an integer") from None


def _unwrap(model: nn.Module) -> nn.Module:
    """Return the user's own module from inside DDP and torch.compile wrappers."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _strip_module_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the ``module.`` prefix that checkpoints saved from a DDP model (the seed's) carry."""
    keys = list(state)
    if keys and all(key.startswith("module.") for key in keys):
        return {key[len("module.") :]: value for key, value in state.items()}
    return dict(state)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    """Write ``obj`` next to ``path`` and rename it into place, so no reader sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600; give the file the mode torch.save would have given it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _python_rng_state() -> list[Any]:
    """Python's RNG state as lists of ints, which ``torch.load(weights_only=True)`` accepts."""
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _numpy_module() -> Any:
    """NumPy if it is installed (it is optional for the trainer), else None."""
    try:
        import numpy
    except ImportError:
        return None
    return numpy


def _numpy_rng_state() -> list[Any] | None:
    """NumPy's legacy global RNG state as plain values, or None without NumPy."""
    numpy = _numpy_module()
    if numpy is None:
        return None
    name, keys, pos, has_gauss, cached = numpy.random.get_state()
    return [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]


class _AutoEpochSampler(DistributedSampler):  # type: ignore[type-arg]
    """A DistributedSampler whose epoch advances on every pass unless ``set_epoch`` is called."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next pass (the seed's explicit style keeps working)."""
        super().set_epoch(epoch)
        self.next_epoch = epoch

    def __iter__(self) -> Iterator[int]:
        """Shuffle with the next epoch's order, then count the pass."""
        self.epoch = self.next_epoch
        self.next_epoch += 1
        return super().__iter__()


class ParallelTrainer:
    """Rank, device and DDP for one training script that runs on CPU, one GPU, or many."""

    def __init__(self, synch: bool | None = None, config: Any = None) -> None:
        """Read torchrun's environment, pick the device and start the process group if needed."""
        env = os.environ
        self.config = config
        self._launched = "RANK" in env and "WORLD_SIZE" in env
        self._rank = _env_int(env, "RANK", 0)
        self._world_size = _env_int(env, "WORLD_SIZE", 1)
        self._local_rank = _env_int(env, "LOCAL_RANK", 0)
        self._local_world_size = _env_int(env, "LOCAL_WORLD_SIZE", 1)

        if synch is True and not self._launched:
            raise TrainerError(
                "synch=True asks for DDP, but this process was not started by torchrun "
                "(RANK and WORLD_SIZE are not set). Launch it with "
                "`handyjobs start SCRIPT --gpus 0,1 -- --synch` (or `--cpu --nproc 2`) or "
                "`torchrun --nproc_per_node N SCRIPT --synch`; or drop --synch to train "
                "in one process."
            )
        if synch is False and self._world_size > 1:
            raise TrainerError(
                f"synch=False, but torchrun started {self._world_size} processes "
                f"(WORLD_SIZE={self._world_size}): each would train its own copy alone. "
                "Pass --synch (synch=True, or leave synch=None), or start one process "
                "with `python SCRIPT` or `handyjobs start SCRIPT --gpus 0`."
            )
        # None means: DDP exactly when the launcher started more than one process.
        self.synch: bool = bool(synch) if synch is not None else self._world_size > 1

        self._device = self._resolve_device()
        self.backend: str | None = None
        self._owns_group = False
        self._closed = False
        if self.synch:
            _crash.install()
            self._start_process_group()
            self._warn_n_gpus()

        self.precision = self._resolve_precision()
        self.scaler: torch.amp.GradScaler | None = (
            torch.amp.GradScaler(self._device.type) if self.precision == "fp16" else None
        )
        self.sync_gradients = True
        self._seed: int | None = None
        self._samplers: list[_AutoEpochSampler] = []
        self._generators: list[torch.Generator] = []
        self._pending_samplers: list[dict[str, Any]] = []
        self._pending_generators: list[torch.Tensor] = []
        self._seed_samplers: list[tuple[Any, _AutoEpochSampler]] = []
        self._micro_steps: dict[int, int] = {}
        self._loss_scale = 1.0
        atexit.register(self.close)

        seed = _config_value(config, "seed")
        if seed is not None:
            self.seed_everything(int(seed))

    # -- set-up ------------------------------------------------------------------------------

    def _resolve_device(self) -> torch.device:
        """HANDYJOBS_DEVICE, else config.device, else cuda:LOCAL_RANK when CUDA works, else cpu."""
        from_env = os.environ.get("HANDYJOBS_DEVICE", "").strip()
        requested = from_env or _config_value(self.config, "device")
        source = "HANDYJOBS_DEVICE" if from_env else "config.device"
        if requested is None or str(requested) == "auto":
            if torch.cuda.is_available():
                return self._cuda_device(source="the automatic choice")
            return torch.device("cpu")
        try:
            device = torch.device(requested)
        except (RuntimeError, TypeError) as exc:
            raise TrainerError(
                f"{source}={requested!r} is not a device torch knows; use 'cpu', 'cuda' or 'cuda:N'"
            ) from exc
        if device.type != "cuda":
            return device
        if not torch.cuda.is_available():
            raise TrainerError(
                f"{source}={requested!r}, but torch {torch.__version__} sees no CUDA GPU. "
                "Set device='cpu' (or HANDYJOBS_DEVICE=cpu), or start the job with "
                "`handyjobs start SCRIPT --cpu` on this machine."
            )
        if self._launched:
            # Under torchrun each process owns the GPU of its local rank; a fixed index in the
            # config (the seed's 'cuda:0') would put every rank on one GPU.
            return self._cuda_device(source=source)
        return torch.device("cuda", device.index if device.index is not None else 0)

    def _cuda_device(self, source: str) -> torch.device:
        """cuda:LOCAL_RANK, checked against the GPUs this process can see."""
        count = torch.cuda.device_count()
        index = self._local_rank if self._launched else 0
        if index >= count:
            raise TrainerError(
                f"{source} picked cuda:{index} for local rank {self._local_rank}, but only "
                f"{count} GPU(s) are visible (CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). Start at most {count} "
                "process(es) per node, e.g. `handyjobs start SCRIPT --gpus 0,1`."
            )
        return torch.device("cuda", index)

    def _start_process_group(self) -> None:
        """Set the CUDA device, then join (or reuse) the default process group."""
        if self._device.type == "cuda":
            # Before init: NCCL binds each rank's communicator to the current device.
            torch.cuda.set_device(self._device)
        if dist.is_initialized():
            # The caller started it: use it, and leave closing it to them.
            self.backend = str(dist.get_backend())
            return
        backend = _config_value(self.config, "backend")
        if backend is None:
            backend = "nccl" if self._device.type == "cuda" else "gloo"
        self.backend = str(backend)
        timeout = float(_config_value(self.config, "init_timeout", DEFAULT_INIT_TIMEOUT))
        device_id = self._device if self._device.type == "cuda" else None
        dist.init_process_group(
            backend=self.backend,
            timeout=datetime.timedelta(seconds=timeout),
            device_id=device_id,
        )
        self._owns_group = True

    def _warn_n_gpus(self) -> None:
        """Say so when the seed's config.n_gpus disagrees with what torchrun started."""
        n_gpus = _config_value(self.config, "n_gpus")
        if n_gpus is None or self._local_rank != 0:
            return
        if int(n_gpus) != self._local_world_size:
            warnings.warn(
                f"config.n_gpus is {n_gpus} but torchrun started {self._local_world_size} "
                f"process(es) on this node (LOCAL_WORLD_SIZE={self._local_world_size}, "
                f"WORLD_SIZE={self._world_size}); using what torchrun started. The number of "
                "processes is chosen at launch (--gpus / --nproc_per_node), not in the config.",
                TrainerWarning,
                stacklevel=3,
            )

    def _resolve_precision(self) -> str:
        """Normalise config.precision to '32', 'bf16' or 'fp16'."""
        raw = str(_config_value(self.config, "precision", "32")).lower()
        if raw not in _PRECISIONS:
            raise TrainerError(
                f"config.precision={raw!r} is not one of {sorted(set(_PRECISIONS))}; "
                "use '32', 'bf16' or 'fp16'"
            )
        return _PRECISIONS[raw]

    # -- who and where -----------------------------------------------------------------------

    @property
    def rank(self) -> int:
        """Global rank of this process (0 when not distributed)."""
        return self._rank if self.synch else 0

    @property
    def local_rank(self) -> int:
        """Rank of this process on its node."""
        return self._local_rank if self.synch else 0

    @property
    def world_size(self) -> int:
        """Number of processes in the job, over all nodes."""
        return self._world_size if self.synch else 1

    @property
    def local_world_size(self) -> int:
        """Number of processes on this node."""
        return self._local_world_size if self.synch else 1

    @property
    def node_rank(self) -> int:
        """Index of this node (torchrun's GROUP_RANK)."""
        return _env_int(os.environ, "GROUP_RANK", 0) if self.synch else 0

    @property
    def is_main(self) -> bool:
        """True on global rank 0 only: the one process that saves, logs and prints."""
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        """True on local rank 0 of each node (for per-node work such as a download)."""
        return self.local_rank == 0

    @property
    def device(self) -> torch.device:
        """The device this process trains on."""
        return self._device

    @property
    def distributed(self) -> bool:
        """True when a process group is in use (DDP)."""
        return self.synch and not self._closed

    def __repr__(self) -> str:
        """Show rank, world size, device and backend."""
        return (
            f"ParallelTrainer(rank={self.rank}, world_size={self.world_size}, "
            f"device={self._device}, backend={self.backend}, precision={self.precision})"
        )

    # -- seed API (TorchHandy's Parallel_Trainer, same signatures) --------------------------------

    def get_device(self) -> torch.device:
        """The device to put models and data on (seed API)."""
        return self._device

    def model_parallel(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device and wrap it in DDP when distributed."""
        model = model.to(self._device)
        if not self.synch:
            return model
        if _config_value(self.config, "sync_batchnorm", False):
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]
        bucket_cap_mb = _config_value(self.config, "bucket_cap_mb")
        kwargs: dict[str, Any] = {
            "device_ids": [self._device.index] if self._device.type == "cuda" else None,
            "find_unused_parameters": bool(
                _config_value(self.config, "find_unused_parameters", False)
            ),
            "static_graph": bool(_config_value(self.config, "static_graph", False)),
            # Gradients live in DDP's buckets: one copy and one buffer fewer per step.
            "gradient_as_bucket_view": bool(
                _config_value(self.config, "gradient_as_bucket_view", True)
            ),
        }
        if bucket_cap_mb is None and self._device.type != "cuda":
            # Naming the cap (torch's own 25 MB) also drops DDP's small 1 MB first bucket.
            # That bucket lets GPUs overlap communication with the rest of backward; on CPU,
            # where gloo's thread competes with compute for the cores, one all-reduce fewer
            # per step measured 5-7% faster (scripts/bench_trainer.py, 2 gloo processes).
            bucket_cap_mb = 25.0
        if bucket_cap_mb is not None:
            kwargs["bucket_cap_mb"] = float(bucket_cap_mb)
        broadcast_buffers = _config_value(self.config, "broadcast_buffers")
        if broadcast_buffers is not None:
            # torch 2.13 renamed it (and warns on the old name); older versions know only it.
            name = "forward_sync_buffers" if _DDP_HAS_FORWARD_SYNC else "broadcast_buffers"
            kwargs[name] = bool(broadcast_buffers)
        return DistributedDataParallel(model, **kwargs)

    def dataset_parallel(self, dataset: Dataset[Any]) -> DistributedSampler[Any] | None:
        """A shuffling DistributedSampler under DDP, None in one process (seed API)."""
        if not self.synch:
            return None
        return self._make_sampler(dataset, shuffle=True, drop_last=False, seed=None)

    def get_loader(
        self,
        dataset: Dataset[Any],
        epoch: int,
        bsz: int,
        num_workers: int,
        train_sampler: DistributedSampler[Any] | None = None,
    ) -> DataLoader[Any]:
        """A shuffled DataLoader for ``epoch``; under DDP each rank reads its shard (seed API)."""
        if not self.synch and train_sampler is None:
            return DataLoader(dataset, bsz, num_workers=num_workers, shuffle=True, drop_last=False)
        if train_sampler is None:
            # The seed crashed here; keep one sampler per dataset so epochs keep counting.
            train_sampler = self._seed_sampler(dataset)
        train_sampler.set_epoch(epoch)
        return DataLoader(
            dataset,
            bsz,
            pin_memory=self._device.type == "cuda",
            num_workers=num_workers,
            sampler=train_sampler,
        )

    def _seed_sampler(self, dataset: Dataset[Any]) -> _AutoEpochSampler:
        """The sampler get_loader made earlier for this dataset, or a new one."""
        for known, sampler in self._seed_samplers:
            if known is dataset:
                return sampler
        sampler = self._make_sampler(dataset, shuffle=True, drop_last=False, seed=None)
        self._seed_samplers.append((dataset, sampler))
        return sampler

    def save_model(
        self, ckpt: Mapping[str, Any], model: nn.Module, path: str | os.PathLike[str]
    ) -> None:
        """Save ``{**ckpt, 'state_dict': ...}`` atomically on global rank 0, then wait for it."""
        if self.is_main:
            payload = dict(ckpt)
            payload["state_dict"] = _unwrap(model).state_dict()
            _atomic_torch_save(payload, Path(path))
        self.barrier()

    def write_log(self, log_file: IO[str] | str | os.PathLike[str], content: str) -> None:
        """Append a line to an open file or a path, on global rank 0 only (seed API)."""
        if not self.is_main:
            return
        if isinstance(log_file, (str, os.PathLike)):
            with open(log_file, "a", encoding="utf-8") as handle:
                handle.write(content + "\n")
            return
        log_file.write(content + "\n")
        log_file.flush()

    def call_func(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Call ``func`` on global rank 0 only and return its result there (None elsewhere)."""
        if not self.is_main:
            return None
        return func(*args, **kwargs)

    def get_model(self, model: nn.Module) -> nn.Module:
        """The user's module inside the DDP (or torch.compile) wrapper."""
        return _unwrap(model)

    # -- collectives -------------------------------------------------------------------------

    def _comm_device(self) -> torch.device:
        """Where tensors must be for the backend: the GPU for nccl, else the CPU."""
        if self.backend is not None and "nccl" in self.backend and self._device.type == "cuda":
            return self._device
        return torch.device("cpu")

    def _check_open(self) -> None:
        """Refuse collectives after close(): the process group is gone."""
        if self._closed and self.synch:
            raise TrainerError("this ParallelTrainer is closed; create a new one to communicate")

    def barrier(self) -> None:
        """Wait until every process gets here (no-op in one process)."""
        self._check_open()
        if self.distributed:
            dist.barrier()

    def all_reduce(self, value: T, op: str = "mean") -> T:
        """Reduce a tensor or a number over all processes: 'mean', 'sum', 'max' or 'min'."""
        if op not in _REDUCE_OPS:
            raise TrainerError(f"all_reduce op={op!r}; use one of {', '.join(_REDUCE_OPS)}")
        self._check_open()
        if isinstance(value, torch.Tensor):
            tensor = value.detach().clone()
            if op == "mean" and not (tensor.is_floating_point() or tensor.is_complex()):
                tensor = tensor.double()
            return self._all_reduce_tensor(tensor, op).to(value.device)  # type: ignore[return-value]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TrainerError(
                f"all_reduce takes a tensor or a number, not {type(value).__name__}; "
                "use gather() for other objects"
            )
        is_int = isinstance(value, int) and op != "mean"
        tensor = torch.tensor(value, dtype=torch.int64 if is_int else torch.float64)
        result = self._all_reduce_tensor(tensor, op).item()
        return int(result) if is_int else float(result)  # type: ignore[return-value]

    def _all_reduce_tensor(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        """All-reduce a private tensor; mean is sum / world size (gloo has no AVG)."""
        if not self.distributed:
            return tensor
        comm = tensor.to(self._comm_device())
        reduce_op = {
            "mean": dist.ReduceOp.SUM,
            "sum": dist.ReduceOp.SUM,
            "max": dist.ReduceOp.MAX,
            "min": dist.ReduceOp.MIN,
        }[op]
        dist.all_reduce(comm, op=reduce_op)
        if op == "mean":
            comm = comm / self.world_size
        return comm

    def gather(self, value: Any) -> Any:
        """Every process's value on every process: tensors concatenated on dim 0, else a list."""
        self._check_open()
        if isinstance(value, torch.Tensor):
            return self._gather_tensor(value)
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def _gather_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-gather tensors whose first dimension may differ (a short last batch)."""
        local = tensor.detach()
        if local.dim() == 0:
            local = local.unsqueeze(0)
        if not self.distributed:
            return local.clone()
        comm_device = self._comm_device()
        comm = local.to(comm_device)
        size = torch.tensor([comm.shape[0]], dtype=torch.int64, device=comm_device)
        sizes = [torch.zeros_like(size) for _ in range(self.world_size)]
        dist.all_gather(sizes, size)
        lengths = [int(s.item()) for s in sizes]
        longest = max(lengths)
        if comm.shape[0] < longest:
            pad = comm.new_zeros((longest - comm.shape[0], *comm.shape[1:]))
            comm = torch.cat([comm, pad])
        parts = [torch.empty_like(comm) for _ in range(self.world_size)]
        dist.all_gather(parts, comm.contiguous())
        out = torch.cat([part[:n] for part, n in zip(parts, lengths, strict=True)])
        return out.to(tensor.device)

    def broadcast(self, value: T, src: int = 0) -> T:
        """``value`` from rank ``src`` on every process (tensors need the same shape everywhere)."""
        self._check_open()
        if not self.distributed:
            return value
        if isinstance(value, torch.Tensor):
            comm = value.detach().clone().to(self._comm_device())
            dist.broadcast(comm, src=src)
            return comm.to(value.device)  # type: ignore[return-value]
        box: list[Any] = [value]
        dist.broadcast_object_list(box, src=src)
        return box[0]  # type: ignore[no-any-return]

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on global rank 0 only, flushed so logs show it at once."""
        if self.is_main:
            kwargs.setdefault("flush", True)
            builtins.print(*args, **kwargs)

    # -- data --------------------------------------------------------------------------------

    def _make_sampler(
        self, dataset: Dataset[Any], shuffle: bool, drop_last: bool, seed: int | None
    ) -> _AutoEpochSampler:
        """A sharding sampler (one shard in one process) registered for save/load."""
        if seed is None:
            seed = self._seed if self._seed is not None else 0
        sampler = _AutoEpochSampler(
            dataset,
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self._samplers.append(sampler)
        index = len(self._samplers) - 1
        if index < len(self._pending_samplers):
            # load() ran before this loader existed: give it the epoch it had when saved.
            sampler.next_epoch = int(self._pending_samplers[index]["epoch"])
        return sampler

    def loader(
        self,
        dataset: Dataset[Any],
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        num_workers: int = 0,
        seed: int | None = None,
        **kwargs: Any,
    ) -> DataLoader[Any]:
        """A DataLoader giving this process ``batch_size`` samples a step from its own shard.

        The shard's order changes on every pass (no ``set_epoch`` needed) and is the same on
        every rank for a given seed; DataLoader workers get seeds that differ across ranks.
        """
        kwargs.setdefault("pin_memory", self._device.type == "cuda")
        if "generator" not in kwargs:
            # The DataLoader draws its workers' base seed from this generator; mixing in the
            # rank makes augmentation in workers differ across ranks after seed_everything.
            base = self._seed if self._seed is not None else torch.initial_seed()
            generator = torch.Generator()
            generator.manual_seed((base * 1_000_003 + self.rank) % 2**63)
            kwargs["generator"] = generator
            self._generators.append(generator)
            index = len(self._generators) - 1
            if index < len(self._pending_generators):
                generator.set_state(self._pending_generators[index])
        if isinstance(dataset, IterableDataset):
            # No sampler can shard an iterable dataset; the dataset must shard itself by rank.
            return DataLoader(dataset, batch_size, num_workers=num_workers, **kwargs)
        sampler = self._make_sampler(dataset, shuffle=shuffle, drop_last=drop_last, seed=seed)
        return DataLoader(
            dataset,
            batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=num_workers,
            **kwargs,
        )

    def to_device(self, data: T, non_blocking: bool = True) -> T:
        """Move tensors, also inside nested dicts, lists and tuples, to this process's device."""
        return self._to_device(data, non_blocking and self._device.type == "cuda")  # type: ignore[no-any-return]

    def _to_device(self, data: Any, non_blocking: bool) -> Any:
        """Recursive worker of to_device; other objects pass through unchanged."""
        if isinstance(data, torch.Tensor):
            return data.to(self._device, non_blocking=non_blocking)
        if isinstance(data, Mapping):
            items = {k: self._to_device(v, non_blocking) for k, v in data.items()}
            try:
                return type(data)(items)  # type: ignore[call-arg]
            except TypeError:
                return items
        if isinstance(data, tuple) and hasattr(data, "_fields"):
            return type(data)(*(self._to_device(v, non_blocking) for v in data))
        if isinstance(data, (list, tuple)):
            return type(data)(self._to_device(v, non_blocking) for v in data)
        return data

    # -- the training step -------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision for the forward pass as config.precision says (a no-op for '32')."""
        if self.precision == "bf16":
            return torch.autocast(self._device.type, dtype=torch.bfloat16)
        if self.precision == "fp16":
            return torch.autocast(self._device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """``loss.backward()``, scaled for fp16 and divided by the steps of ``accumulate``."""
        if self._loss_scale != 1.0:
            loss = loss * self._loss_scale
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward(**kwargs)  # type: ignore[no-untyped-call]

    @contextlib.contextmanager
    def accumulate(self, model: nn.Module, steps: int) -> Iterator[bool]:
        """Accumulate gradients over ``steps`` micro-steps; yields True on the one that syncs.

        Put the forward pass and ``backward`` inside the block; DDP all-reduces gradients only
        on the final micro-step. Step the optimizer after the block when it yielded True.
        """
        if steps < 1:
            raise TrainerError(f"accumulate steps={steps}; use 1 or more")
        key = id(model)
        count = self._micro_steps.get(key, 0) + 1
        sync = count >= steps
        self._micro_steps[key] = 0 if sync else count
        self.sync_gradients = sync
        previous_scale = self._loss_scale
        self._loss_scale = 1.0 / steps
        skip_sync = (
            model.no_sync()
            if isinstance(model, DistributedDataParallel) and not sync
            else contextlib.nullcontext()
        )
        try:
            with skip_sync:
                yield sync
        finally:
            self._loss_scale = previous_scale

    def clip_grad_norm(
        self,
        model: nn.Module | Iterable[torch.Tensor],
        max_norm: float,
        norm_type: float = 2.0,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> torch.Tensor:
        """Clip gradients to ``max_norm`` and return their total norm (unscaled first for fp16)."""
        if self.scaler is not None:
            if optimizer is None:
                raise TrainerError(
                    "precision is fp16: pass optimizer= to clip_grad_norm so the gradients are "
                    "unscaled before clipping"
                )
            self.scaler.unscale_(optimizer)
        params = model.parameters() if isinstance(model, nn.Module) else model
        return torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)

    def step(self, optimizer: torch.optim.Optimizer, zero_grad: bool = True) -> None:
        """``optimizer.step()`` (through the grad scaler for fp16), then zero the gradients."""
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        if zero_grad:
            # None instead of zeros: no memset, and DDP re-points them at its buckets.
            optimizer.zero_grad(set_to_none=True)

    # -- checkpoints -------------------------------------------------------------------------

    def _own_state(self) -> dict[str, Any]:
        """This process's RNG and loader state, which differ across ranks."""
        rng: dict[str, Any] = {
            "python": _python_rng_state(),
            "numpy": _numpy_rng_state(),
            "torch": torch.get_rng_state(),
        }
        if self._device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self._device)
        samplers = [{"epoch": s.next_epoch} for s in self._samplers]
        generators = [g.get_state() for g in self._generators]
        return {"rng": rng, "samplers": samplers, "generators": generators}

    def save(self, path: str | os.PathLike[str], **state: Any) -> None:
        """Save models, optimizers, schedulers, numbers, RNG and loader state; call on all ranks.

        Modules are saved without their DDP wrapper (no ``module.`` prefix). Global rank 0
        writes through a temp file and a rename; everyone waits until the file is in place.
        """
        if _STATE_KEY in state:
            raise TrainerError(f"'{_STATE_KEY}' is reserved for the trainer's own state")
        self._check_open()
        payload: dict[str, Any] = {}
        for name, value in state.items():
            if isinstance(value, nn.Module):
                payload[name] = _unwrap(value).state_dict()
            elif callable(getattr(value, "state_dict", None)):
                payload[name] = value.state_dict()
            else:
                payload[name] = value
        per_rank = self.gather(self._own_state())
        if self.is_main:
            payload[_STATE_KEY] = {
                "version": 1,
                "world_size": self.world_size,
                "ranks": per_rank,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            }
            _atomic_torch_save(payload, Path(path))
        self.barrier()

    def _read_checkpoint(self, path: Path) -> dict[str, Any]:
        """Load to CPU; when only rank 0 can see the file (no shared disk), it sends it."""
        here = path.is_file()
        everywhere = self.all_reduce(int(here), "min") == 1 if self.distributed else here
        if everywhere:
            return torch.load(path, map_location="cpu", weights_only=True)  # type: ignore[no-any-return]
        at_main = self.broadcast(here) if self.distributed else here
        if not at_main:
            raise TrainerError(f"checkpoint {path} not found; check the path or start afresh")
        blob = path.read_bytes() if self.is_main else None
        blob = self.broadcast(blob)
        assert blob is not None
        return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)  # type: ignore[no-any-return]

    def load(self, path: str | os.PathLike[str], **state: Any) -> dict[str, Any]:
        """Restore what ``save`` wrote into the given objects; return every saved value.

        Everything is read to the CPU first, then copied into the objects on their devices.
        RNG and loader state are restored too, so training continues exactly where it stopped.
        """
        self._check_open()
        checkpoint = self._read_checkpoint(Path(path))
        missing = [name for name in state if name not in checkpoint]
        if missing:
            raise TrainerError(
                f"checkpoint {path} has no {', '.join(missing)}; it holds "
                f"{', '.join(k for k in checkpoint if k != _STATE_KEY) or 'nothing'}"
            )
        for name, target in state.items():
            if isinstance(target, nn.Module):
                _unwrap(target).load_state_dict(_strip_module_prefix(checkpoint[name]))
            elif callable(getattr(target, "load_state_dict", None)):
                target.load_state_dict(checkpoint[name])
        own = checkpoint.pop(_STATE_KEY, None)
        if own is not None:
            self._restore_own_state(own)
        return checkpoint

    def _restore_own_state(self, own: Mapping[str, Any]) -> None:
        """Put back this rank's RNG streams, loader epochs and the grad scaler."""
        ranks = own.get("ranks") or []
        if own.get("world_size") != self.world_size and self.is_main:
            warnings.warn(
                f"checkpoint was saved by {own.get('world_size')} process(es), this run has "
                f"{self.world_size}: data order and random streams will not match the old run",
                TrainerWarning,
                stacklevel=3,
            )
        if ranks:
            mine = ranks[self.rank % len(ranks)]
            self._restore_rng(mine.get("rng", {}))
            self._pending_samplers = list(mine.get("samplers", []))
            self._pending_generators = list(mine.get("generators", []))
            for sampler, saved in zip(self._samplers, self._pending_samplers, strict=False):
                sampler.next_epoch = int(saved["epoch"])
            for generator, gstate in zip(self._generators, self._pending_generators, strict=False):
                generator.set_state(gstate)
        scaler_state = own.get("scaler")
        if self.scaler is not None and scaler_state:
            self.scaler.load_state_dict(scaler_state)

    def _restore_rng(self, rng: Mapping[str, Any]) -> None:
        """Restore the python, numpy, torch and CUDA RNG states saved for this rank."""
        if rng.get("python") is not None:
            version, internal, gauss = rng["python"]
            random.setstate((version, tuple(internal), gauss))
        numpy = _numpy_module()
        if numpy is not None and rng.get("numpy") is not None:
            name, keys, pos, has_gauss, cached = rng["numpy"]
            numpy.random.set_state(
                (name, numpy.asarray(keys, dtype=numpy.uint32), pos, has_gauss, cached)
            )
        if rng.get("torch") is not None:
            torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and self._device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self._device)

    def seed_everything(self, seed: int) -> int:
        """Seed torch alike on every rank (same model init) and python/numpy per rank.

        Loaders made afterwards shuffle with this seed and give their DataLoader workers
        seeds that differ across ranks, so random augmentation differs from rank to rank.
        """
        self._seed = int(seed)
        torch.manual_seed(self._seed)
        random.seed(self._seed + self.rank)
        numpy = _numpy_module()
        if numpy is not None:
            numpy.random.seed((self._seed + self.rank) % 2**32)
        return self._seed

    # -- output ------------------------------------------------------------------------------

    def progress(
        self,
        iterable: Iterable[T],
        desc: str = "",
        total: int | None = None,
        interval: float = 30.0,
    ) -> Iterator[T]:
        """Iterate with a rich bar on rank 0 (plain lines when not a TTY); silent elsewhere."""
        if total is None and hasattr(iterable, "__len__"):
            with contextlib.suppress(TypeError):
                total = len(iterable)  # type: ignore[arg-type]
        if not self.is_main:
            return iter(iterable)
        if sys.stdout.isatty():
            return progress_bars.rich_progress(iterable, desc, total)
        return progress_bars.plain_progress(iterable, desc, total, interval)

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Wait briefly for the other ranks, then destroy the process group (safe to repeat)."""
        self._shutdown(wait=not _crash.happened)

    def _shutdown(self, wait: bool) -> None:
        """Destroy the process group this trainer started, after an exit barrier if ``wait``."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if not (self._owns_group and dist.is_initialized()):
            return
        if wait:
            self._exit_barrier()
        dist.destroy_process_group()

    def _exit_barrier(self) -> None:
        """Meet the other ranks through the store before anyone closes their connections.

        Measured on gloo: when one rank tears down while its peer is still finishing DDP's
        last all-reduce, the peer aborts ("terminate called without an active exception")
        in about 1 run in 3. A store barrier (not a collective, so nothing can be left in
        flight) removes that; its timeout bounds the wait when a peer has already gone.
        """
        timeout = float(_config_value(self.config, "close_timeout", DEFAULT_CLOSE_TIMEOUT))
        try:
            store = dist.distributed_c10d._get_default_store()
            _exit_barrier_generation[0] += 1
            prefix = f"handyjobs/close/{_exit_barrier_generation[0]}"
            if store.add(f"{prefix}/arrived", 1) >= self.world_size:
                store.set(f"{prefix}/done", "1")
            store.wait([f"{prefix}/done"], datetime.timedelta(seconds=timeout))
        except Exception as exc:  # a peer gone or a store lost: closing must still finish
            warnings.warn(
                f"ranks did not all reach close() within {timeout:.0f}s ({exc}); closing anyway",
                TrainerWarning,
                stacklevel=3,
            )

    def __enter__(self) -> ParallelTrainer:
        """Use the trainer in a ``with`` block that closes it."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        """Close on leaving the block; after an error, without waiting for the other ranks."""
        clean = exc_type is None or (isinstance(exc, SystemExit) and exc.code in (0, None))
        self._shutdown(wait=clean and not _crash.happened)


class _CrashFlag:
    """Set by the chained ``sys.excepthook`` when the script dies of an uncaught exception."""

    def __init__(self) -> None:
        self.happened = False
        self.installed = False

    def install(self) -> None:
        """Chain onto ``sys.excepthook`` once, so close() at exit knows not to wait for peers."""
        if self.installed:
            return
        self.installed = True
        previous = sys.excepthook

        def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
            # A crashing rank must exit at once so torchrun notices and stops the others.
            self.happened = True
            previous(exc_type, exc, tb)

        sys.excepthook = hook


_crash = _CrashFlag()
_exit_barrier_generation = [0]


#: The seed's name (TorchHandy's ``Parallel_Trainer``), kept so its scripts run unchanged.
Parallel_Trainer = ParallelTrainer
