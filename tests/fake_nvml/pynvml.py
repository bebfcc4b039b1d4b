"""A stand-in for nvidia-ml-py's ``pynvml`` that behaves like a given NVIDIA driver.

Tests put this folder first on ``sys.path`` (in-process) or on ``PYTHONPATH`` (a subprocess such
as ``python -m handyjobs gpus --json``). It keeps the real binding's shape, learnt from
nvidia-ml-py 13.x, so that handyjobs meets the same things it meets on a real machine:

- the same exception classes: ``NVMLError`` (whose constructor returns the subclass for the
  code), one ``NVMLError_<Name>`` subclass per ``NVML_ERROR_<NAME>``, and
  ``NVMLLibraryMismatchError``, which derives from ``Exception`` and *not* from ``NVMLError``;
- each Python function looks up the driver's C function first, so a symbol the driver lacks
  raises ``NVMLError_FunctionNotFound`` (code 13); the unversioned
  ``nvmlDeviceGetComputeRunningProcesses`` calls ``_v3`` and turns that into
  ``NVMLLibraryMismatchError``, as the real one does;
- ``nvmlDeviceGetMemoryInfo(handle, version=nvmlMemory_v2)`` calls ``..._v2``, whose ``used``
  leaves out what the driver reserves, while v1's ``used`` counts it;
- NVML must be initialised (reference-counted) before any device call.

What the "driver" does is read from the JSON file named by ``HANDYJOBS_TEST_NVML`` on every call,
so a test may rewrite it between calls (free a GPU, end a hang)::

    {
      "driver": "470.57.02",                       # nvmlSystemGetDriverVersion
      "missing": ["nvmlDeviceGetComputeRunningProcesses_v3"],   # C symbols this driver lacks
      "binding_lacks": ["nvmlMemory_v2"],          # names absent from this (older) binding;
                                                   #   read once, when the module is imported
      "errors": {"nvmlInitWithFlags": "DriverNotLoaded"},        # C symbol -> error, any device
      "hang": ["nvmlDeviceGetCount_v2"],           # C symbols that do not return (any device)
      "scramble": ["nvmlDeviceGetComputeRunningProcesses_v3"],   # struct layout mismatch:
                                                   #   pids come back as 0 and 4294967295
      "process_names": {"4242": "/usr/bin/python3"},             # nvmlSystemGetProcessName
      "gpus": [{
        "uuid": "GPU-...", "name": "NVIDIA A100-SXM4-80GB",
        "total_mib": 81920, "used_mib": 3, "reserved_mib": 519,   # v1 used = used + reserved
        "util": 0,                                 # utilisation %, null: NotSupported
        "mig": false,                              # MIG mode; absent: NotSupported (no MIG)
        "processes": [{"pid": 4242, "used_mib": 5000}],           # used_mib null: N/A
        "errors": {"nvmlDeviceGetMemoryInfo_v2": "NoPermission"}, # this device only
        "hang": ["nvmlDeviceGetMemoryInfo_v2"]     # this device only
      }]
    }

A hang lasts while the file still names it (the thread polls), like a driver that recovers.
``HANDYJOBS_TEST_NVML_LOG``, when set, names a file that gets one line per C call:
``<symbol>`` or ``<symbol> <device index>``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from functools import wraps
from typing import Any, TypeVar, cast

SCENARIO_ENV = "HANDYJOBS_TEST_NVML"
LOG_ENV = "HANDYJOBS_TEST_NVML_LOG"

# ---- constants (values as in NVML's nvml.h) ------------------------------------------------------

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_VGPU_ECC_NOT_SUPPORTED = 22
NVML_ERROR_INSUFFICIENT_RESOURCES = 23
NVML_ERROR_FREQ_NOT_SUPPORTED = 24
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_DEPRECATED = 26
NVML_ERROR_NOT_READY = 27
NVML_ERROR_GPU_NOT_FOUND = 28
NVML_ERROR_INVALID_STATE = 29
NVML_ERROR_RESET_TYPE_NOT_SUPPORTED = 30
NVML_ERROR_UNKNOWN = 999

NVML_DEVICE_MIG_DISABLE = 0x0
NVML_DEVICE_MIG_ENABLE = 0x1
#: the version word of nvmlMemory_v2_t (struct size 40 | version 2 << 24)
nvmlMemory_v2 = 0x02000028

_MIB = 1024 * 1024

# What nvmlErrorString says for the codes handyjobs may show to a person.
_DESCRIPTIONS = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_TIMEOUT: "Timeout",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH: "Argument version mismatch",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


# ---- exceptions: the real binding's classes and hierarchy ----------------------------------------

_E = TypeVar("_E", bound="NVMLError")


class NVMLLibraryMismatchError(Exception):
    """The binding wanted a C function this driver lacks (not an NVMLError, as in pynvml)."""


class NVMLError(Exception):
    """An NVML return code; ``NVMLError(code)`` is an instance of that code's subclass."""

    value: int
    _by_code: dict[int, type[NVMLError]] = {}  # noqa: RUF012 - the binding's class-level map

    def __new__(cls: type[_E], value: int) -> _E:
        """Pick the subclass for ``value`` when constructed as plain NVMLError."""
        typ: type[NVMLError] = cls
        if cls is NVMLError:
            typ = NVMLError._by_code.get(value, cls)
        obj = cast(_E, Exception.__new__(typ))
        obj.value = value
        return obj

    def __str__(self) -> str:
        """The driver's words for the code."""
        return _DESCRIPTIONS.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other: object) -> bool:
        """Errors compare by code, as in the binding."""
        return isinstance(other, NVMLError) and self.value == other.value

    __hash__ = None  # type: ignore[assignment]  # the binding's errors are unhashable too


def _class_name(constant: str) -> str:
    """NVML_ERROR_GPU_IS_LOST -> NVMLError_GpuIsLost (the binding's naming)."""
    words = constant[len("NVML_ERROR_") :].split("_")
    return "NVMLError_" + "".join(w.capitalize() for w in words)


def _error_class(code: int, name: str) -> type[NVMLError]:
    """A subclass of NVMLError whose constructor takes no code: it has its own."""

    def new(cls: type[NVMLError], *args: object) -> NVMLError:
        return NVMLError.__new__(cls, code)

    cls = type(name, (NVMLError,), {"__new__": new})
    cls.__module__ = __name__
    return cls


for _constant, _code in list(globals().items()):
    if _constant.startswith("NVML_ERROR_") and isinstance(_code, int):
        _cls = _error_class(_code, _class_name(_constant))
        globals()[_cls.__name__] = _cls
        NVMLError._by_code[_code] = _cls


def _error(name: str) -> NVMLError:
    """The error a scenario names: "NoPermission", "GpuIsLost" ... (class name less prefix)."""
    for code, cls in NVMLError._by_code.items():
        if cls.__name__ == f"NVMLError_{name}":
            return NVMLError(code)
    raise ValueError(f"{SCENARIO_ENV}: no NVML error named {name!r}")


# ---- the "driver" --------------------------------------------------------------------------------


def _scenario() -> dict[str, Any]:
    """The driver's current state, read afresh (a test may rewrite it between calls)."""
    path = os.environ.get(SCENARIO_ENV)
    if not path:
        raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)  # no driver described: none installed
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{SCENARIO_ENV}={path}: expected a JSON object")
    return data


_lock = threading.Lock()
_refcount = 0


class _Device:
    """A device handle (the binding's is an opaque c_nvmlDevice_t)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"<fake nvmlDevice {self.index}>"


class _Friendly:
    """An object with attributes, as the binding's nvmlFriendlyObject and ctypes structs."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


def _log(symbol: str, device: _Device | None) -> None:
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(symbol if device is None else f"{symbol} {device.index}")
            f.write("\n")


def _gpu(sc: dict[str, Any], device: _Device) -> dict[str, Any]:
    gpus = sc.get("gpus", [])
    if not 0 <= device.index < len(gpus):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    gpu = gpus[device.index]
    assert isinstance(gpu, dict)
    return gpu


def _hangs(symbol: str, device: _Device | None) -> bool:
    """Whether ``symbol`` (on ``device``) is named as a hang right now."""
    try:
        sc = _scenario()
    except (OSError, ValueError, NVMLError):
        return False  # the test is over and its files are gone: let the thread end
    if symbol in sc.get("hang", []):
        return True
    if device is None:
        return False
    gpus = sc.get("gpus", [])
    return 0 <= device.index < len(gpus) and symbol in gpus[device.index].get("hang", [])


def _c(symbol: str, device: _Device | None = None) -> dict[str, Any]:
    """Stand in for looking up and calling the driver's C function ``symbol``.

    Returns the scenario for the caller to answer from; raises what the binding raises.
    """
    sc = _scenario()
    if symbol in sc.get("missing", []):
        # _nvmlGetFunctionPointer: the symbol is not in libnvidia-ml.so
        raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
    if symbol != "nvmlInitWithFlags" and _refcount == 0:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    _log(symbol, device)
    while _hangs(symbol, device):
        time.sleep(0.02)  # a call that does not return, until the test says so
    errors = dict(sc.get("errors", {}))
    if device is not None:
        errors.update(_gpu(sc, device).get("errors", {}))
    if symbol in errors:
        raise _error(str(errors[symbol]))
    return sc


# ---- the binding's functions ---------------------------------------------------------------------


def nvmlInitWithFlags(flags: int) -> None:
    """Start NVML (reference-counted)."""
    global _refcount
    _c("nvmlInitWithFlags")
    with _lock:
        _refcount += 1


def nvmlInit() -> None:
    """Start NVML."""
    nvmlInitWithFlags(0)


def nvmlShutdown() -> None:
    """Stop NVML once for each nvmlInit."""
    global _refcount
    _c("nvmlShutdown")
    with _lock:
        if _refcount > 0:
            _refcount -= 1


def nvmlErrorString(result: int) -> str:
    """The words for an error code."""
    return str(NVMLError(result))


def nvmlSystemGetDriverVersion() -> str:
    """The driver's version string."""
    return str(_c("nvmlSystemGetDriverVersion").get("driver", "550.54.15"))


def nvmlSystemGetProcessName(pid: int) -> str:
    """The name the driver knows a process by (a path), or NotFound."""
    names = _c("nvmlSystemGetProcessName").get("process_names", {})
    if str(pid) not in names:
        raise NVMLError(NVML_ERROR_NOT_FOUND)
    return str(names[str(pid)])


def nvmlDeviceGetCount() -> int:
    """How many GPUs the driver has."""
    return len(_c("nvmlDeviceGetCount_v2").get("gpus", []))


def nvmlDeviceGetHandleByIndex(index: int) -> _Device:
    """A handle on GPU ``index``."""
    device = _Device(index)
    _gpu(_c("nvmlDeviceGetHandleByIndex_v2", device), device)
    return device


def nvmlDeviceGetName(handle: _Device) -> str:
    """The GPU's product name."""
    return str(_gpu(_c("nvmlDeviceGetName", handle), handle)["name"])


def nvmlDeviceGetUUID(handle: _Device) -> str:
    """The GPU's UUID."""
    sc = _c("nvmlDeviceGetUUID", handle)
    return str(_gpu(sc, handle).get("uuid", f"GPU-fake-nvml-{handle.index}"))


def nvmlDeviceGetMemoryInfo(handle: _Device, version: int | None = None) -> _Friendly:
    """Memory in bytes: v1 (total, free, used) or, with ``version``, v2 (adds reserved)."""
    symbol = "nvmlDeviceGetMemoryInfo_v2" if version else "nvmlDeviceGetMemoryInfo"
    gpu = _gpu(_c(symbol, handle), handle)
    total = int(gpu["total_mib"]) * _MIB
    used = int(gpu.get("used_mib", 0)) * _MIB
    reserved = int(gpu.get("reserved_mib", 0)) * _MIB
    if not version:
        # v1 counts what the driver reserves as used
        return _Friendly(total=total, free=total - used - reserved, used=used + reserved)
    if version != nvmlMemory_v2:
        raise NVMLError(NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
    return _Friendly(
        version=version, total=total, reserved=reserved, free=total - used - reserved, used=used
    )


def nvmlDeviceGetUtilizationRates(handle: _Device) -> _Friendly:
    """GPU and memory utilisation in percent."""
    gpu = _gpu(_c("nvmlDeviceGetUtilizationRates", handle), handle)
    if gpu.get("mig") or gpu.get("util") is None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return _Friendly(gpu=int(gpu["util"]), memory=0)


def nvmlDeviceGetMigMode(device: _Device) -> list[int]:
    """[current, pending] MIG mode."""
    gpu = _gpu(_c("nvmlDeviceGetMigMode", device), device)
    if "mig" not in gpu:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    mode = NVML_DEVICE_MIG_ENABLE if gpu["mig"] else NVML_DEVICE_MIG_DISABLE
    return [mode, mode]


def _processes(symbol: str, handle: _Device) -> list[_Friendly]:
    sc = _c(symbol, handle)
    gpu = _gpu(sc, handle)
    scrambled = symbol in sc.get("scramble", [])
    found = []
    for k, proc in enumerate(gpu.get("processes", [])):
        used = proc.get("used_mib")
        pid = int(proc["pid"])
        if scrambled:
            # what reading one struct layout over another gives: nonsense in every field
            found.append(
                _Friendly(
                    pid=(0, 4294967295)[k % 2],
                    usedGpuMemory=pid << 32,
                    gpuInstanceId=4294967295,
                    computeInstanceId=4294967295,
                )
            )
            continue
        found.append(
            _Friendly(
                pid=pid,
                usedGpuMemory=None if used is None else int(used) * _MIB,
                gpuInstanceId=4294967295,
                computeInstanceId=4294967295,
            )
        )
    return found


def nvmlDeviceGetComputeRunningProcesses_v2(handle: _Device) -> list[_Friendly]:
    """Compute processes through the driver's _v2 function."""
    return _processes("nvmlDeviceGetComputeRunningProcesses_v2", handle)


def nvmlDeviceGetComputeRunningProcesses_v3(handle: _Device) -> list[_Friendly]:
    """Compute processes through the driver's _v3 function (R510 and later)."""
    return _processes("nvmlDeviceGetComputeRunningProcesses_v3", handle)


_F = TypeVar("_F", bound=Any)


def _throw_on_version_mismatch(func: _F) -> _F:
    """FunctionNotFound from an unversioned call becomes NVMLLibraryMismatchError."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except NVMLError as e:
            if e.value != NVML_ERROR_FUNCTION_NOT_FOUND:
                raise
            raise NVMLLibraryMismatchError(
                "Unversioned function called and the pyNVML version does not match the NVML "
                f"lib version. Use a versioned function such as {func.__name__}_v2"
            ) from None

    return cast(_F, wrapper)


@_throw_on_version_mismatch
def nvmlDeviceGetComputeRunningProcesses(handle: _Device) -> list[_Friendly]:
    """Compute processes through the newest version this binding knows."""
    if "nvmlDeviceGetComputeRunningProcesses_v3" in globals():
        return nvmlDeviceGetComputeRunningProcesses_v3(handle)
    return nvmlDeviceGetComputeRunningProcesses_v2(handle)  # a binding from before _v3


# ---- an older binding ----------------------------------------------------------------------------


def _drop_what_the_binding_lacks() -> None:
    """Remove the names an older nvidia-ml-py did not have, as the scenario says."""
    path = os.environ.get(SCENARIO_ENV)
    if not path or not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        lacks = json.load(f).get("binding_lacks", [])
    for name in lacks:
        globals().pop(name, None)


_drop_what_the_binding_lacks()
