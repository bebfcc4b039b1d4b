"""The process state: who this process is (rank, world), where it trains, and its process group.

``ProcessState`` is usable alone, like Accelerate's ``PartialState``, for scripts that want
torchrun's ranks, the right device and a clean teardown without the rest of the trainer::

    state = ProcessState()
    with state.main_process_first():
        dataset = load_or_download()   # rank 0 first, then the others read its cache
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist

from handyjobs.trainer.devices import resolve_device
from handyjobs.trainer.errors import TrainerError, TrainerWarning
from handyjobs.trainer.settings import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_INIT_TIMEOUT,
    config_value,
    env_int,
)


def needs_cpu_group(backend: str | None) -> bool:
    """True when the backend cannot move CPU tensors (nccl), so a gloo side group is needed."""
    return backend is not None and "gloo" not in backend


class ProcessState:
    """Rank, world size, device and the process group of one process of a (maybe) DDP job."""

    def __init__(
        self, synch: bool | None = None, config: Any = None, env: Mapping[str, str] | None = None
    ) -> None:
        """Read torchrun's environment, pick the device and start the process group if needed."""
        env = os.environ if env is None else env
        self.config = config
        self.launched = "RANK" in env and "WORLD_SIZE" in env
        self._rank = env_int(env, "RANK", 0)
        self._world_size = env_int(env, "WORLD_SIZE", 1)
        self._local_rank = env_int(env, "LOCAL_RANK", 0)
        self._local_world_size = env_int(env, "LOCAL_WORLD_SIZE", 1)
        self._node_rank = env_int(env, "GROUP_RANK", 0)

        if synch is True and not self.launched:
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

        self.device = resolve_device(
            config, launched=self.launched, local_rank=self._local_rank, env=env
        )
        if self.device.type == "cuda":
            # For every CUDA device, not only under DDP: otherwise pin-memory threads and
            # libraries that use "the current device" make a context on GPU 0 as well. Before
            # init_process_group, since NCCL binds each rank's communicator to this device.
            torch.cuda.set_device(self.device)
        self.backend: str | None = None
        self._owns_group = False
        self._closed = False
        self._cpu_group: Any = None
        self._cpu_group_ready = False
        if self.synch:
            _crash.install()
            self._start_process_group()
            self._warn_n_gpus()
        atexit.register(self.close)

    # -- set-up ------------------------------------------------------------------------------

    def _start_process_group(self) -> None:
        """Join (or reuse) the default process group."""
        if dist.is_initialized():
            # The caller started it: use it, and leave closing it to them.
            self.backend = str(dist.get_backend())
            return
        backend = config_value(self.config, "backend")
        if backend is None:
            backend = "nccl" if self.device.type == "cuda" else "gloo"
        self.backend = str(backend)
        device_id = self.device if self.device.type == "cuda" else None
        dist.init_process_group(backend=self.backend, timeout=self.timeout, device_id=device_id)
        self._owns_group = True

    @property
    def timeout(self) -> datetime.timedelta:
        """``config.init_timeout``: of the group's start and of every collective."""
        seconds = float(config_value(self.config, "init_timeout", DEFAULT_INIT_TIMEOUT))
        return datetime.timedelta(seconds=seconds)

    def _warn_n_gpus(self) -> None:
        """Say so when the seed's config.n_gpus disagrees with what torchrun started."""
        n_gpus = config_value(self.config, "n_gpus")
        if n_gpus is None or self._local_rank != 0:
            return
        if int(n_gpus) != self._local_world_size:
            warnings.warn(
                f"config.n_gpus is {n_gpus} but torchrun started {self._local_world_size} "
                f"process(es) on this node (LOCAL_WORLD_SIZE={self._local_world_size}, "
                f"WORLD_SIZE={self._world_size}); using what torchrun started. The number of "
                "processes is chosen at launch (--gpus / --nproc_per_node), not in the config.",
                TrainerWarning,
                stacklevel=4,
            )

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
        return self._node_rank if self.synch else 0

    @property
    def is_main(self) -> bool:
        """True on global rank 0 only: the one process that saves, logs and prints."""
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        """True on local rank 0 of each node (for per-node work such as a download)."""
        return self.local_rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group is in use (DDP)."""
        return self.synch and not self._closed

    @property
    def closed(self) -> bool:
        """True after close()."""
        return self._closed

    def __repr__(self) -> str:
        """Show rank, world size, device and backend."""
        return (
            f"ProcessState(rank={self.rank}, world_size={self.world_size}, "
            f"device={self.device}, backend={self.backend})"
        )

    # -- synchronisation ---------------------------------------------------------------------

    def check_open(self) -> None:
        """Refuse collectives after close(): the process group is gone."""
        if self._closed and self.synch:
            raise TrainerError("this ParallelTrainer is closed; create a new one to communicate")

    def barrier(self) -> None:
        """Wait until every process gets here (no-op in one process)."""
        self.check_open()
        if self.distributed:
            dist.barrier()

    @contextlib.contextmanager
    def main_process_first(self, local: bool = False) -> Iterator[None]:
        """Run the block on global rank 0 (each node's local rank 0 if ``local``) first.

        The others wait until it is done, then run the block themselves: download or
        preprocess into a cache once, and read the cache everywhere. Enter it on every rank.
        """
        first = self.is_local_main if local else self.is_main
        if not first:
            self.barrier()
        yield
        if first:
            self.barrier()

    def comm_device(self) -> torch.device:
        """Where tensors must be for the default group: the GPU for nccl, else the CPU."""
        if self.backend is not None and "nccl" in self.backend and self.device.type == "cuda":
            return self.device
        return torch.device("cpu")

    def cpu_group(self) -> Any:
        """A group that moves CPU tensors: the default one on gloo, else a gloo side group.

        Made on first use, which must happen on every rank (it is a collective). Objects and
        checkpoint bytes go through it, so they are never staged in GPU memory.
        """
        self.check_open()
        if not self._cpu_group_ready:
            if needs_cpu_group(self.backend):
                self._cpu_group = dist.new_group(backend="gloo", timeout=self.timeout)
            self._cpu_group_ready = True
        return self._cpu_group

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Wait briefly for the other ranks, then destroy the process group (safe to repeat)."""
        self.shutdown(wait=not _crash.happened)

    def shutdown(self, wait: bool) -> None:
        """Destroy the process group this state started, after an exit barrier if ``wait``."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if not (self._owns_group and dist.is_initialized()):
            return
        if wait:
            if self.device.type == "cuda":
                # The store barrier below lines up the CPUs only; an all-reduce still queued
                # on the GPU would be aborted by the teardown.
                torch.cuda.synchronize(self.device)
            self._exit_barrier()
        dist.destroy_process_group()

    def _exit_barrier(self) -> None:
        """Meet the other ranks through the store before anyone closes their connections.

        Measured on gloo: when one rank tears down while its peer is still finishing DDP's
        last all-reduce, the peer aborts ("terminate called without an active exception")
        in about 1 run in 3. A store barrier (not a collective, so nothing can be left in
        flight) removes that; its timeout bounds the wait when a peer has already gone.
        """
        timeout = float(config_value(self.config, "close_timeout", DEFAULT_CLOSE_TIMEOUT))
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
                stacklevel=4,
            )

    def __enter__(self) -> ProcessState:
        """Use the state in a ``with`` block that closes it."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        """Close on leaving the block; after an error, without waiting for the other ranks."""
        self.shutdown(wait=clean_exit(exc_type, exc))


def clean_exit(exc_type: type[BaseException] | None, exc: BaseException | None) -> bool:
    """Whether a ``with`` block ended well enough to wait for the other ranks at close."""
    clean = exc_type is None or (isinstance(exc, SystemExit) and exc.code in (0, None))
    return clean and not _crash.happened


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
