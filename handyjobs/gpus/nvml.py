"""Reading GPUs through NVML (nvidia-ml-py's ``pynvml``) with a deadline and per-call fallbacks.

Only :mod:`handyjobs.gpus.discovery` uses this module; it turns the raw readings into ``GpuInfo``.

Three things make NVML awkward, and each is handled here rather than in the callers:

- **Versions.** A binding newer than the driver asks for C functions the driver lacks. The
  binding then raises ``NVMLError_FunctionNotFound`` from the versioned function, and its
  unversioned ``nvmlDeviceGetComputeRunningProcesses`` turns that into
  ``NVMLLibraryMismatchError``, which is *not* an ``NVMLError``. Every such call here falls
  back to the next older version (``_v3``, ``_v2``, unversioned; memory ``_v2`` then v1), and
  only when none exists does the caller fall back to nvidia-smi.
- **Deadline.** NVML has no timeout: a wedged driver blocks the calling thread for ever. Each
  GPU is read on a daemon thread of its own and the caller waits until a deadline only; a
  thread still inside NVML then is remembered (:func:`pending`) so that later readings do not
  pile up more threads on the same GPU, and NVML is not shut down under it.
- **Per-GPU failures.** NoPermission on a MIG parent, a lost GPU: they become that GPU's
  ``errors`` and the other GPUs are still read.

``pynvml`` is imported inside :meth:`Session.open` only (``handyjobs list`` must not pay for
it) and typed as ``Any``: the binding has no types, and tests substitute a stand-in module.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
import threading
import time
from collections.abc import Callable

from handyjobs.structs import field, mutable, replace

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from typing import Any

_MIB = 1024 * 1024
#: PID_MAX_LIMIT of 64-bit Linux: every process id is below it, in any pid namespace. A
#: driver/binding pair that disagrees on the process struct's layout reports 0 or 4294967295.
PID_MAX_LIMIT = 4 * 1024 * 1024

#: The process-list functions, newest first; a driver lacking one gets the next.
PROCESS_FUNCS = (
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses",
)


@mutable
class RawProcess:
    """One compute process as the driver listed it (pid in the driver's numbering)."""

    pid: int
    used_mib: int | None
    #: nvmlSystemGetProcessName's answer (a path), or None
    nvml_name: str | None = None


@mutable
class RawGpu:
    """What NVML said about one GPU; ``errors`` say which parts it could not say."""

    index: int
    uuid: str = ""
    name: str = "unknown GPU"
    used_mib: int = 0
    total_mib: int = 0
    utilization_pct: int | None = None
    mig: bool = False
    processes: list[RawProcess] = field(default_factory=list)
    #: CLOCK_BOOTTIME seconds just before the process list was asked for (see gpus._vouch)
    asked_at: float | None = None
    #: impossible pids the driver reported and that were dropped
    dropped_pids: list[int] = field(default_factory=list)
    #: which process-list function answered
    process_func: str | None = None
    #: the process list could not be read because no version of the function exists here
    lacks: str | None = None
    errors: list[str] = field(default_factory=list)
    #: the call in progress (for a GPU that does not answer)
    call: str = ""


@mutable
class Reading:
    """One reading of every GPU: ``ok`` False means NVML itself failed (see ``note``)."""

    ok: bool
    gpus: list[RawGpu] = field(default_factory=list)
    note: str | None = None
    #: some call did not answer before the deadline (the note says which)
    hung: bool = False


# ---- work on threads, against a deadline --------------------------------------------------------


class _Task:
    """One piece of NVML work on a daemon thread; the caller waits for it until a deadline."""

    def __init__(self, key: str, fn: Callable[[_Task], Any]) -> None:
        self.key = key
        self.call = "starting"
        self.started = time.monotonic()
        self.result: Any = None
        self.error: BaseException | None = None
        self.partial: Any = None
        self._fn = fn
        self._done = threading.Event()
        # daemon: a thread stuck inside the driver must not keep the process from exiting
        self._thread = threading.Thread(target=self._run, name=f"handyjobs-nvml-{key}", daemon=True)

    def start(self) -> None:
        """Start the work, remembering it until it ends (see :func:`pending`)."""
        with _LOCK:
            _PENDING[self.key] = self
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = self._fn(self)
        except BaseException as e:  # handed to the waiting thread, which raises it there
            self.error = e
        finally:
            with _LOCK:
                if _PENDING.get(self.key) is self:
                    del _PENDING[self.key]
            self._done.set()

    def wait(self, deadline: float) -> bool:
        """Wait until the work ends or the deadline (time.monotonic) passes; True if it ended."""
        return self._done.wait(max(0.0, deadline - time.monotonic()))

    def value(self) -> Any:
        """The work's result, re-raising its exception here (call after :meth:`wait`)."""
        if self.error is not None:
            raise self.error
        return self.result


_LOCK = threading.Lock()
_PENDING: dict[str, _Task] = {}


def pending() -> dict[str, str]:
    """NVML work still running past its deadline: key ("init", "gpu 3") -> the call it is in."""
    with _LOCK:
        return {key: task.call for key, task in _PENDING.items()}


def _stuck(key: str) -> _Task | None:
    """The earlier work on ``key`` that still has not returned, if any."""
    with _LOCK:
        return _PENDING.get(key)


def boot_clock() -> float | None:
    """Seconds since boot on the clock that /proc/PID/stat's start time counts in, or None."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    return None if clock is None else time.clock_gettime(clock)


#: Device nodes of a loaded NVIDIA driver: Linux's control node, and WSL2's GPU paravirtual one.
DRIVER_NODES = ("/dev/nvidiactl", "/dev/dxg")
#: The scenario file of the stand-in driver the tests load as ``pynvml`` (tests/fake_nvml).
STAND_IN_ENV = "HANDYJOBS_TEST_NVML"


def driver_present() -> bool:
    """Whether NVML can have a driver to talk to: a device node of one, or a binding already
    loaded (or the tests' stand-in). Without either, importing nvidia-ml-py (and ctypes.util
    with it) cost `handyjobs gpus` a fifth of its start on a machine with no GPU."""
    if "pynvml" in sys.modules or os.environ.get(STAND_IN_ENV):
        return True
    return any(os.path.exists(node) for node in DRIVER_NODES)


# ---- a session ------------------------------------------------------------------------------


class Session:
    """NVML initialised once for any number of readings; close it to shut NVML down."""

    def __init__(self, timeout_s: float) -> None:
        """Prepare a session whose every opening or reading waits ``timeout_s`` at most."""
        self.timeout_s = timeout_s
        self._nvml: Any = None
        self._errors: tuple[type[BaseException], ...] = ()
        self._missing: tuple[type[BaseException], ...] = ()
        self._opened = False
        #: why NVML cannot be used at all in this session (no binding, no driver), once known
        self.unusable: str | None = None
        # what this driver turned out to offer, learnt once per session
        self._memory_v2: bool | None = None
        self._process_funcs: tuple[str, ...] = PROCESS_FUNCS

    # ---- opening and closing

    def _open(self, deadline: float) -> Reading | None:
        """Import the binding and start NVML; None when ready, else a failed reading."""
        if self._opened:
            return None
        if self.unusable is not None:
            return Reading(False, note=self.unusable)
        if not driver_present():
            self.unusable = "no NVIDIA driver (no /dev/nvidiactl)"
            return Reading(False, note=self.unusable)
        try:
            # imported here: it costs start-up time that `handyjobs list` must not pay
            nvml: Any = importlib.import_module("pynvml")
        except ImportError:
            self.unusable = "nvidia-ml-py (pynvml) is not installed"
            return Reading(False, note=self.unusable)
        self._nvml = nvml
        mismatch = getattr(nvml, "NVMLLibraryMismatchError", None)  # nvidia-ml-py >= 11.515
        self._errors = (nvml.NVMLError,) + ((mismatch,) if mismatch is not None else ())
        missing: list[type[BaseException]] = [nvml.NVMLError_FunctionNotFound]
        for name in ("NVMLError_ArgumentVersionMismatch",):
            if hasattr(nvml, name):  # older bindings do not know this code
                missing.append(getattr(nvml, name))
        if mismatch is not None:
            missing.append(mismatch)
        self._missing = tuple(missing)

        stuck = _stuck("init")
        if stuck is not None:
            return self._still_stuck("NVML", stuck)
        task: _Task = _Task("init", self._init)
        task.start()
        if not task.wait(deadline):
            return Reading(
                False,
                note=f"NVML did not answer {task.call} within {self.timeout_s:g} s "
                "(the driver may be wedged)",
                hung=True,
            )
        failure = task.value()
        if failure is not None:
            self.unusable = failure
            return Reading(False, note=failure)
        self._opened = True
        return None

    def _init(self, task: _Task) -> str | None:
        """nvmlInit on the worker thread: None, or why NVML cannot be used."""
        nvml = self._nvml
        task.call = "nvmlInit"
        try:
            nvml.nvmlInit()
        except nvml.NVMLError_LibraryNotFound:
            return "no NVIDIA driver (libnvidia-ml not found)"
        except nvml.NVMLError_DriverNotLoaded:
            return "the NVIDIA driver is not loaded"
        except self._errors as e:
            return f"NVML failed to start ({e})"
        return None

    def close(self) -> None:
        """Shut NVML down, unless a call into it has not returned (it would be pulled away)."""
        if not self._opened:
            return
        self._opened = False
        if pending():
            return  # leave it initialised: shutting down under a running call is not safe
        with contextlib.suppress(*self._errors):  # the readings are already in hand
            self._nvml.nvmlShutdown()

    # ---- reading

    def read(self) -> Reading:
        """Read every GPU, waiting ``timeout_s`` at most from now."""
        deadline = time.monotonic() + self.timeout_s
        failed = self._open(deadline)
        if failed is not None:
            return failed
        stuck = _stuck("count")
        if stuck is not None:
            return self._still_stuck("NVML", stuck)
        counting: _Task = _Task("count", self._count)
        counting.start()
        if not counting.wait(deadline):
            return Reading(
                False,
                note=f"NVML did not answer {counting.call} within {self.timeout_s:g} s "
                "(the driver may be wedged)",
                hung=True,
            )
        try:
            count = counting.value()
        except self._errors as e:
            return Reading(False, note=f"NVML failed ({e})")

        gpus: dict[int, RawGpu] = {}
        hung: list[str] = []
        tasks: list[tuple[int, _Task]] = []
        for index in range(count):
            key = f"gpu {index}"
            earlier = _stuck(key)
            if earlier is not None:
                age = time.monotonic() - earlier.started
                gpu = _copy(earlier.partial, index)
                gpu.errors.append(f"NVML has not answered {earlier.call} for {age:.0f} s")
                gpus[index] = gpu
                hung.append(f"GPU {index} ({earlier.call}, waiting {age:.0f} s)")
                continue
            task: _Task = _Task(key, functools.partial(self._read_gpu, index=index))
            task.partial = RawGpu(index)
            task.start()
            tasks.append((index, task))
        for index, task in tasks:
            if task.wait(deadline):
                gpus[index] = task.value()
            else:
                gpu = _copy(task.partial, index)
                gpu.errors.append(f"NVML did not answer {task.call} within {self.timeout_s:g} s")
                gpus[index] = gpu
                hung.append(f"GPU {index} ({task.call})")
        note = None
        if hung:
            note = (
                f"NVML did not answer for {', '.join(hung)} within {self.timeout_s:g} s "
                "(the driver may be wedged); those GPUs count as busy"
            )
        return Reading(True, [gpus[i] for i in sorted(gpus)], note=note, hung=bool(hung))

    def _still_stuck(self, what: str, task: _Task) -> Reading:
        """A reading for NVML work that an earlier call started and that still has not ended."""
        age = time.monotonic() - task.started
        return Reading(
            False,
            note=f"{what} has not answered {task.call} for {age:.0f} s (the driver may be wedged)",
            hung=True,
        )

    def _count(self, task: _Task) -> int:
        task.call = "nvmlDeviceGetCount"
        return int(self._nvml.nvmlDeviceGetCount())

    def _read_gpu(self, task: _Task, index: int) -> RawGpu:
        """Read one GPU on its worker thread; each failed part becomes an error of that GPU."""
        nvml = self._nvml
        gpu: RawGpu = task.partial

        def call(label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            # the label is what a hang is reported as: the C function the binding calls
            task.call = label
            gpu.call = label
            return fn(*args, **kwargs)

        try:
            handle = call("nvmlDeviceGetHandleByIndex", nvml.nvmlDeviceGetHandleByIndex, index)
        except self._errors as e:
            gpu.errors.append(f"cannot open it: {e}")
            return gpu
        try:
            gpu.uuid = _text(call("nvmlDeviceGetUUID", nvml.nvmlDeviceGetUUID, handle))
            gpu.name = _text(call("nvmlDeviceGetName", nvml.nvmlDeviceGetName, handle))
        except self._errors as e:
            gpu.errors.append(f"name and UUID: {e}")
        self._read_mig(gpu, handle, call)
        self._read_memory(gpu, handle, call)
        try:
            rates = call(
                "nvmlDeviceGetUtilizationRates", nvml.nvmlDeviceGetUtilizationRates, handle
            )
            gpu.utilization_pct = int(rates.gpu)
        except self._errors:
            pass  # MIG-enabled and some virtual GPUs report no utilisation: unknown, not wrong
        self._read_processes(gpu, handle, call)
        for proc in gpu.processes:
            try:
                name = call("nvmlSystemGetProcessName", nvml.nvmlSystemGetProcessName, proc.pid)
                proc.nvml_name = _text(name) or None
            except self._errors:
                pass  # the name is a courtesy; /proc is asked too
        task.call = gpu.call = "done"
        return gpu

    def _read_mig(self, gpu: RawGpu, handle: Any, call: Callable[..., Any]) -> None:
        nvml = self._nvml
        if not hasattr(nvml, "nvmlDeviceGetMigMode"):
            return  # a binding from before MIG: no GPU it knows has it
        try:
            current, _pending = call("nvmlDeviceGetMigMode", nvml.nvmlDeviceGetMigMode, handle)
        except (nvml.NVMLError_NotSupported, *self._missing):
            return  # a GPU or driver without MIG
        except self._errors as e:
            gpu.errors.append(f"MIG mode: {e}")
            return
        gpu.mig = int(current) == int(getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1))

    def _read_memory(self, gpu: RawGpu, handle: Any, call: Callable[..., Any]) -> None:
        """Memory through ``_v2`` (which, like nvidia-smi, leaves out what the driver reserves)."""
        nvml = self._nvml
        memory = None
        # v1 counts the driver's reservation (hundreds of MiB to ~1 GiB on A100/H100-class
        # parts) as used: an idle GPU would look close to the busy threshold.
        if self._memory_v2 is not False and hasattr(nvml, "nvmlMemory_v2"):
            try:
                memory = call(
                    "nvmlDeviceGetMemoryInfo_v2",
                    nvml.nvmlDeviceGetMemoryInfo,
                    handle,
                    version=nvml.nvmlMemory_v2,
                )
                self._memory_v2 = True
            except self._missing:
                self._memory_v2 = False  # a driver before R510
            except self._errors as e:
                gpu.errors.append(f"memory use: {e}")
                return
        if memory is None:
            try:
                memory = call("nvmlDeviceGetMemoryInfo", nvml.nvmlDeviceGetMemoryInfo, handle)
            except self._errors as e:
                gpu.errors.append(f"memory use: {e}")
                return
        gpu.used_mib = int(memory.used) // _MIB
        gpu.total_mib = int(memory.total) // _MIB

    def _read_processes(self, gpu: RawGpu, handle: Any, call: Callable[..., Any]) -> None:
        """The compute processes, through the newest process-list function the driver has."""
        nvml = self._nvml
        funcs = [f for f in self._process_funcs if hasattr(nvml, f)]
        scrambled: tuple[str, list[Any]] | None = None
        for name in funcs:
            gpu.asked_at = boot_clock()
            try:
                raw = call(name, getattr(nvml, name), handle)
            except self._missing:
                continue
            except nvml.NVMLError_NotSupported:
                return  # some virtual GPUs list no processes; memory use still tells
            except self._errors as e:
                gpu.errors.append(f"process list: {e}")
                return
            raw = list(raw)
            if any(not _possible_pid(int(p.pid)) for p in raw):
                # struct layouts disagree between binding and driver: an older version may not
                scrambled = scrambled or (name, raw)
                continue
            self._process_funcs = tuple(f for f in PROCESS_FUNCS[PROCESS_FUNCS.index(name) :])
            self._keep(gpu, name, raw)
            return
        if scrambled is not None:
            self._keep(gpu, *scrambled)
            return
        gpu.lacks = (
            "this driver has no nvmlDeviceGetComputeRunningProcesses that nvidia-ml-py knows "
            "(the binding is newer than the driver)"
        )

    def _keep(self, gpu: RawGpu, func: str, raw: list[Any]) -> None:
        """Keep the possible processes of a process list, dropping impossible pids."""
        gpu.process_func = func
        total = gpu.total_mib
        for p in raw:
            pid = int(p.pid)
            if not _possible_pid(pid):
                gpu.dropped_pids.append(pid)
                continue
            used = p.usedGpuMemory
            used_mib = None if used is None else int(used) // _MIB
            if used_mib is not None and total and used_mib > total:
                used_mib = None  # more than the GPU has: garbage, not a measurement
            gpu.processes.append(RawProcess(pid, used_mib))


def _possible_pid(pid: int) -> bool:
    """Whether a pid from the driver can be a process at all (not 0, not 4294967295)."""
    return 0 < pid < PID_MAX_LIMIT


def _copy(partial: Any, index: int) -> RawGpu:
    """A snapshot of what a still-running reader has found so far (it may go on writing)."""
    if not isinstance(partial, RawGpu):
        return RawGpu(index)
    return replace(
        partial,
        processes=[],  # a half-read process list would mislead; the GPU counts as busy anyway
        dropped_pids=[],
        errors=list(partial.errors),
    )


def _text(value: str | bytes) -> str:
    """A string from pynvml, which gives bytes in older releases."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
