"""GPU discovery (NVML, then nvidia-smi) and GPU spec parsing; no policy (see booking.py).

Discovery goes through one function, :func:`discover`, which tries in order:

1. ``HANDYJOBS_FAKE_GPUS`` (testing seam): the path of a JSON file of canned GPUs, read afresh
   on every call so a test can rewrite it to free a GPU. Never consulted unless the variable is set.
2. NVML through ``pynvml`` (package ``nvidia-ml-py``), imported only here, inside the call.
3. ``nvidia-smi --query-gpu=... --format=csv,noheader,nounits`` and ``--query-compute-apps=...``.
4. Nothing: ``Discovery("none", (), note=...)``, where the note says why. "No GPU" never raises.

GPU indices are nvidia-smi's (PCI bus order, which is also NVML's index order); jobs get
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so CUDA numbers the GPUs the same way. Nothing here imports
torch or initialises CUDA.

JSON schema of :meth:`GpuInfo.to_dict` (used by ``handyjobs gpus --json``); a fake GPU file has
the same shape, ``{"gpus": [<gpu>, ...]}``::

    {
      "index": 0,                          # int, nvidia-smi's index
      "uuid": "GPU-6a1c...",               # str; a fake may leave it out: "GPU-fake-<index>"
      "name": "NVIDIA A100-SXM4-80GB",     # str
      "memory_used_mib": 3,                # int
      "memory_total_mib": 81920,           # int
      "utilization_pct": 0,                # int or null (unknown, e.g. in MIG mode)
      "mig": false,                        # bool: MIG mode is on (a fake may leave it out)
      "error": null,                       # str or null: why this GPU could not be read
      "processes": [                       # compute processes; a fake may leave it out: []
        {"pid": 4242,                      # int
         "used_memory_mib": 5000,          # int or null (unknown)
         "user": "alice",                  # str or null; a fake may leave it out: read from /proc
         "name": "python"}                 # str or null; a fake may leave it out: read from /proc
      ]
    }

:meth:`Discovery.to_dict` wraps these as ``{"source": ..., "note": ..., "gpus": [<gpu>, ...]}``.

Which GPU counts as busy, allowed or free for a job is decided in :mod:`handyjobs.booking`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from handyjobs.errors import UsageError

FAKE_ENV = "HANDYJOBS_FAKE_GPUS"
#: Seconds one nvidia-smi query may take; a hung driver must not hang ``handyjobs list``.
SMI_TIMEOUT_S = 10.0

SMI_GPU_QUERY = "index,uuid,name,memory.used,memory.total,utilization.gpu"
SMI_APPS_QUERY = "gpu_uuid,pid,used_memory,process_name"

_MIB = 1024 * 1024
_INDEX_RE = re.compile(r"[0-9]+")
# GPU-<uuid>, MIG-<uuid> and the older MIG-GPU-<uuid>/<gi>/<ci>; fake files use GPU-fake-<n>.
_UUID_RE = re.compile(r"(GPU|MIG)-[A-Za-z0-9_/-]+")


@dataclass(frozen=True)
class GpuProcess:
    """A compute process running on a GPU."""

    pid: int
    used_memory_mib: int | None
    user: str | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the process as JSON-ready data (schema in the module docstring)."""
        return {
            "pid": self.pid,
            "used_memory_mib": self.used_memory_mib,
            "user": self.user,
            "name": self.name,
        }


@dataclass(frozen=True)
class GpuInfo:
    """One physical GPU as seen at discovery time."""

    index: int
    uuid: str
    name: str
    memory_used_mib: int
    memory_total_mib: int
    utilization_pct: int | None
    processes: tuple[GpuProcess, ...] = field(default=())
    #: MIG mode is on: CUDA_VISIBLE_DEVICES=<index> then exposes at most one instance.
    mig: bool = False
    #: Why part of this GPU could not be read (it then never counts as free), else None.
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the GPU as JSON-ready data (schema in the module docstring)."""
        return {
            "index": self.index,
            "uuid": self.uuid,
            "name": self.name,
            "memory_used_mib": self.memory_used_mib,
            "memory_total_mib": self.memory_total_mib,
            "utilization_pct": self.utilization_pct,
            "processes": [p.to_dict() for p in self.processes],
            "mig": self.mig,
            "error": self.error,
        }


@dataclass(frozen=True)
class Discovery:
    """What discovery found, where it looked, and (when nothing) why."""

    source: str
    gpus: tuple[GpuInfo, ...]
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the discovery as JSON-ready data (schema in the module docstring)."""
        return {
            "source": self.source,
            "note": self.note,
            "gpus": [g.to_dict() for g in self.gpus],
        }

    def by_index(self) -> dict[int, GpuInfo]:
        """Return the GPUs keyed by index."""
        return {g.index: g for g in self.gpus}


# --------------------------------------------------------------------------- discovery


def discover(env: Mapping[str, str] | None = None) -> Discovery:
    """Find the GPUs: the fake file when set, else NVML, else nvidia-smi, else source "none"."""
    env = os.environ if env is None else env
    fake = env.get(FAKE_ENV, "")
    if fake:
        return read_fake(fake)
    nvml = query_nvml()
    if nvml.source == "nvml":
        return nvml
    smi = query_nvidia_smi(path=env.get("PATH"))
    if smi.source == "nvidia-smi":
        return smi
    return Discovery("none", (), note=f"{nvml.note} and {smi.note}")


def read_fake(path: str) -> Discovery:
    """Read a fake GPU file (the testing seam); a missing or malformed file is a UsageError."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise UsageError(
            f"{FAKE_ENV}={path}: cannot read it ({e.strerror}); "
            f"point it at a JSON file of fake GPUs or unset it"
        ) from e
    except ValueError as e:
        raise UsageError(
            f"{FAKE_ENV}={path}: not valid JSON ({e}); fix the file or unset {FAKE_ENV}"
        ) from e
    try:
        gpus = _fake_gpus(data)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{FAKE_ENV}={path}: {e}; fix the file or unset {FAKE_ENV}") from e
    return Discovery("fake", gpus)


def _fake_gpus(data: object) -> tuple[GpuInfo, ...]:
    """Validate the parsed fake file and build its GPUs, sorted by index."""
    if not isinstance(data, dict) or not isinstance(data.get("gpus"), list):
        raise ValueError('expected an object {"gpus": [...]}')
    gpus: dict[int, GpuInfo] = {}
    for i, raw in enumerate(data["gpus"]):
        where = f"gpus[{i}]"
        if not isinstance(raw, dict):
            raise ValueError(f"{where} is not an object")
        index = _req_int(raw, "index", where)
        if index in gpus:
            raise ValueError(f"{where}: index {index} appears twice")
        raw_procs = raw.get("processes", [])
        if not isinstance(raw_procs, list):
            raise ValueError(f"{where}.processes is not a list")
        procs = []
        for j, rp in enumerate(raw_procs):
            pwhere = f"{where}.processes[{j}]"
            if not isinstance(rp, dict):
                raise ValueError(f"{pwhere} is not an object")
            pid = _req_int(rp, "pid", pwhere)
            proc = GpuProcess(
                pid=pid,
                used_memory_mib=_opt_int(rp, "used_memory_mib", pwhere),
                user=_opt_str(rp, "user", pwhere),
                name=_opt_str(rp, "name", pwhere),
            )
            procs.append(_with_proc_info(proc))
        uuid = _opt_str(raw, "uuid", where) or f"GPU-fake-{index}"
        name = _opt_str(raw, "name", where)
        if name is None:
            raise ValueError(f"{where}.name is missing")
        gpus[index] = GpuInfo(
            index=index,
            uuid=uuid,
            name=name,
            memory_used_mib=_req_int(raw, "memory_used_mib", where),
            memory_total_mib=_req_int(raw, "memory_total_mib", where),
            utilization_pct=_opt_int(raw, "utilization_pct", where),
            processes=tuple(procs),
            mig=_opt_bool(raw, "mig", where),
            error=_opt_str(raw, "error", where),
        )
    return tuple(gpus[k] for k in sorted(gpus))


def _opt_bool(raw: Mapping[str, object], key: str, where: str) -> bool:
    """Return an optional boolean field of a fake-file object (absent: False)."""
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{where}.{key} must be true or false, not {value!r}")
    return value


def _req_int(raw: Mapping[str, object], key: str, where: str) -> int:
    """Return a required non-negative integer field of a fake-file object."""
    value = _opt_int(raw, key, where)
    if value is None:
        raise ValueError(f"{where}.{key} is missing")
    return value


def _opt_int(raw: Mapping[str, object], key: str, where: str) -> int | None:
    """Return an optional non-negative integer field of a fake-file object."""
    value = raw.get(key)
    if value is None:
        return None
    # bool is an int subclass; true/false in the file is a mistake, not 1/0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}.{key} must be a non-negative integer, not {value!r}")
    return value


def _opt_str(raw: Mapping[str, object], key: str, where: str) -> str | None:
    """Return an optional string field of a fake-file object."""
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key} must be a string, not {value!r}")
    return value


def query_nvml() -> Discovery:
    """Ask NVML for the GPUs; source "nvml", or "none" with a note when NVML is unusable."""
    try:
        # Imported here: it costs start-up time that `handyjobs list` should not pay.
        import pynvml
    except ImportError:
        return Discovery("none", (), note="nvidia-ml-py (pynvml) is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        return Discovery("none", (), note="no NVIDIA driver (libnvidia-ml not found)")
    except pynvml.NVMLError_DriverNotLoaded:
        return Discovery("none", (), note="the NVIDIA driver is not loaded")
    except pynvml.NVMLError as e:
        return Discovery("none", (), note=f"NVML failed to start ({e})")
    try:
        gpus = tuple(_nvml_gpu(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount()))
    except pynvml.NVMLError as e:
        return Discovery("none", (), note=f"NVML failed ({e})")
    finally:
        # a failed shutdown changes nothing: the answer is already in hand, or already an error
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
    if not gpus:
        return Discovery("nvml", (), note="the NVIDIA driver reports no GPUs")
    return Discovery("nvml", gpus)


def _nvml_gpu(pynvml: Any, index: int) -> GpuInfo:
    """Read one GPU through NVML (NVML's index order is PCI bus order, as nvidia-smi's)."""
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        utilization: int | None = int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except pynvml.NVMLError:
        # MIG-enabled and some virtual GPUs report no utilisation; that is not a failure
        utilization = None
    try:
        raw_procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_NoPermission):
        # memory use still marks such a GPU busy (see busy_reason)
        raw_procs = []
    procs = []
    for rp in raw_procs:
        used = rp.usedGpuMemory
        proc = GpuProcess(
            pid=int(rp.pid),
            used_memory_mib=None if used is None else int(used) // _MIB,
        )
        proc = _with_proc_info(proc)
        if proc.name is None:
            proc = dataclasses.replace(proc, name=_nvml_name(pynvml, proc.pid))
        procs.append(proc)
    return GpuInfo(
        index=index,
        uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
        name=_text(pynvml.nvmlDeviceGetName(handle)),
        memory_used_mib=int(memory.used) // _MIB,
        memory_total_mib=int(memory.total) // _MIB,
        utilization_pct=utilization,
        processes=tuple(procs),
    )


def _nvml_name(pynvml: Any, pid: int) -> str | None:
    """Return NVML's name for a process (a path; its last part), or None."""
    try:
        name = _text(pynvml.nvmlSystemGetProcessName(pid))
    except pynvml.NVMLError:
        return None
    return os.path.basename(name) or None


def _text(value: str | bytes) -> str:
    """Return a string from pynvml, which gives bytes in older releases."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def query_nvidia_smi(path: str | None = None, timeout_s: float = SMI_TIMEOUT_S) -> Discovery:
    """Ask nvidia-smi for the GPUs; source "nvidia-smi", or "none" with a note when unusable."""
    exe = shutil.which("nvidia-smi", path=path)
    if exe is None:
        return Discovery("none", (), note="no nvidia-smi on PATH")
    try:
        gpus_csv = _run_smi(exe, f"--query-gpu={SMI_GPU_QUERY}", timeout_s)
        apps_csv = _run_smi(exe, f"--query-compute-apps={SMI_APPS_QUERY}", timeout_s)
    except _SmiFailed as e:
        return Discovery("none", (), note=str(e))
    try:
        gpus = parse_smi_gpus(gpus_csv)
        apps = parse_smi_apps(apps_csv)
    except ValueError as e:
        return Discovery("none", (), note=f"cannot read nvidia-smi's output ({e})")
    found = tuple(
        GpuInfo(
            index=g.index,
            uuid=g.uuid,
            name=g.name,
            memory_used_mib=g.memory_used_mib,
            memory_total_mib=g.memory_total_mib,
            utilization_pct=g.utilization_pct,
            processes=tuple(_with_proc_info(p) for p in apps.get(g.uuid, ())),
        )
        for g in gpus
    )
    if not found:
        return Discovery("nvidia-smi", (), note="nvidia-smi reports no GPUs")
    return Discovery("nvidia-smi", found)


class _SmiFailed(Exception):
    """nvidia-smi could not answer; the message is the note for the user."""


def _run_smi(exe: str, query: str, timeout_s: float) -> str:
    """Run one nvidia-smi CSV query and return its stdout."""
    argv = [exe, query, "--format=csv,noheader,nounits"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as e:
        raise _SmiFailed(f"nvidia-smi did not answer within {timeout_s:g} s") from e
    except OSError as e:
        raise _SmiFailed(f"cannot run nvidia-smi ({e.strerror})") from e
    if done.returncode != 0:
        text = (done.stdout + done.stderr).strip()
        first = text.splitlines()[0] if text else f"exit code {done.returncode}"
        # "No devices were found" comes with a non-zero exit code: that is simply no GPU
        if first.lower().startswith("no devices were found"):
            return ""
        raise _SmiFailed(f"nvidia-smi failed ({first})")
    return done.stdout


def _smi_value(text: str) -> str | None:
    """Return a stripped nvidia-smi CSV value, or None for "[N/A]", "[Not Supported]" and kin."""
    value = text.strip()
    if not value or value.startswith("[") or value.upper() == "N/A":
        return None
    return value


def _smi_int(text: str, what: str) -> int | None:
    """Return an integer nvidia-smi value, None when unavailable; ValueError when garbled."""
    value = _smi_value(text)
    if value is None:
        return None
    try:
        return int(float(value)) if "." in value else int(value)
    except ValueError:
        raise ValueError(f"{what} is {value!r}, not a number") from None


def _smi_lines(csv_text: str) -> list[str]:
    """Return the data lines of nvidia-smi CSV output (no blanks, no "No devices" notice)."""
    lines = []
    for line in csv_text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.lower().startswith(("no devices", "no running")):
            continue
        lines.append(stripped)
    return lines


def parse_smi_gpus(csv_text: str) -> list[GpuInfo]:
    """Parse ``nvidia-smi --query-gpu=index,uuid,name,memory.used,memory.total,utilization.gpu``."""
    gpus = []
    for line in _smi_lines(csv_text):
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 6:
            raise ValueError(f"expected 6 fields in {line!r}")
        # the name sits in the middle and is the only field that could hold a comma
        index_s, uuid_s = fields[0], fields[1]
        used_s, total_s, util_s = fields[-3:]
        name = ", ".join(fields[2:-3])
        index = _smi_int(index_s, "index")
        uuid = _smi_value(uuid_s)
        if index is None or uuid is None:
            raise ValueError(f"no index or uuid in {line!r}")
        gpus.append(
            GpuInfo(
                index=index,
                uuid=uuid,
                name=_smi_value(name) or "unknown GPU",
                # unknown memory reads as 0; such a GPU is judged by its processes alone
                memory_used_mib=_smi_int(used_s, "memory.used") or 0,
                memory_total_mib=_smi_int(total_s, "memory.total") or 0,
                utilization_pct=_smi_int(util_s, "utilization.gpu"),
            )
        )
    return sorted(gpus, key=lambda g: g.index)


def parse_smi_apps(csv_text: str) -> dict[str, list[GpuProcess]]:
    """Parse ``nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory,process_name`` by UUID."""
    apps: dict[str, list[GpuProcess]] = {}
    for line in _smi_lines(csv_text):
        # process_name is last and may itself contain commas (it is a path)
        fields = line.split(",", 3)
        if len(fields) < 4:
            raise ValueError(f"expected 4 fields in {line!r}")
        uuid = _smi_value(fields[0])
        pid = _smi_int(fields[1], "pid")
        if uuid is None or pid is None:
            raise ValueError(f"no GPU uuid or pid in {line!r}")
        proc = GpuProcess(
            pid=pid,
            used_memory_mib=_smi_int(fields[2], "used_memory"),
            name=_smi_value(fields[3]),
        )
        apps.setdefault(uuid, []).append(proc)
    return apps


def _with_proc_info(proc: GpuProcess) -> GpuProcess:
    """Fill in a process's user and short name from /proc where they are missing and readable."""
    user = proc.user if proc.user is not None else _proc_user(proc.pid)
    # NVML and nvidia-smi give paths ("/opt/conda/bin/python"); people know the last part
    name = (os.path.basename(proc.name) or None) if proc.name else _proc_comm(proc.pid)
    return GpuProcess(proc.pid, proc.used_memory_mib, user, name)


def _proc_user(pid: int) -> str | None:
    """Return the login name owning /proc/<pid> (the uid as text when unnamed), or None."""
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
    try:
        import pwd  # Unix only; imported here so the module still imports elsewhere

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def _proc_comm(pid: int) -> str | None:
    """Return /proc/<pid>/comm, or None when unreadable."""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip() or None
    except OSError:
        return None


# --------------------------------------------------------------------------- specs


def parse_gpu_spec(text: str, *, source: str = "--gpus") -> list[str]:
    """Split a GPU spec such as "2,4" or "GPU-8f3a...,1" into index and UUID tokens."""
    hint = "give GPU indices or UUIDs separated by commas, such as 0,1 (see `handyjobs gpus`)"
    if not text.strip():
        raise UsageError(f"{source} is empty; {hint}")
    tokens: list[str] = []
    seen: dict[str, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        if _INDEX_RE.fullmatch(item):
            token = str(int(item))  # "02" and "2" are the same GPU
            key = token
        elif _UUID_RE.fullmatch(item):
            token = item
            key = item.lower()
        elif not item:
            raise UsageError(f"{source} {text!r} has an empty item; {hint}")
        else:
            raise UsageError(f"{source} {text!r}: {item!r} is not a GPU index or UUID; {hint}")
        if key in seen:
            raise UsageError(f"{source} {text!r} names GPU {item} twice; give each GPU once")
        seen[key] = item
        tokens.append(token)
    return tokens


def resolve_gpus(tokens: Sequence[str], discovery: Discovery) -> list[int]:
    """Map index and UUID tokens to GPU indices that exist, in the order given."""
    if not discovery.gpus:
        why = f" ({discovery.note})" if discovery.note else ""
        raise UsageError(f"no NVIDIA GPU found{why}; use --cpu to run on the CPU")
    by_index = discovery.by_index()
    by_uuid = {g.uuid.lower(): g.index for g in discovery.gpus}
    have = f"this machine has {_plural_gpus(sorted(by_index))} (see `handyjobs gpus`)"
    indices: list[int] = []
    missing: list[str] = []
    for token in tokens:
        if _INDEX_RE.fullmatch(token):
            index = int(token)
            if index in by_index:
                indices.append(index)
            else:
                missing.append(str(index))
        elif token.lower() in by_uuid:
            indices.append(by_uuid[token.lower()])
        elif token.upper().startswith("MIG-"):
            # handyjobs schedules whole GPUs; GpuInfo does not list MIG instances
            raise UsageError(
                f"{token} is a MIG instance, which handyjobs cannot schedule; "
                f"give the index of a whole GPU instead ({have})"
            )
        else:
            missing.append(token)
    if missing:
        if len(missing) == 1:
            raise UsageError(f"GPU {missing[0]} does not exist; {have}")
        raise UsageError(f"GPUs {', '.join(missing)} do not exist; {have}")
    dupes = sorted({i for i in indices if indices.count(i) > 1})
    if dupes:
        raise UsageError(
            f"GPU {dupes[0]} is named twice (by index and by UUID); give each GPU once"
        )
    return indices


def _plural_gpus(indices: Sequence[int]) -> str:
    """Return "GPU 0" or "GPUs 0-3,5" for sorted indices."""
    if len(indices) == 1:
        return f"GPU {indices[0]}"
    return f"GPUs {format_indices(indices)}"


def format_indices(indices: Sequence[int]) -> str:
    """Return sorted indices compactly, with runs as ranges: [0, 1, 2, 3, 5] -> "0-3,5"."""
    parts: list[str] = []
    ordered = sorted(set(indices))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def compute_pids(discovery: Discovery) -> dict[int, list[int]]:
    """Return, for each compute process, the sorted indices of the GPUs it runs on."""
    pids: dict[int, list[int]] = {}
    for gpu in sorted(discovery.gpus, key=lambda g: g.index):
        for proc in gpu.processes:
            indices = pids.setdefault(proc.pid, [])
            if gpu.index not in indices:
                indices.append(gpu.index)
    return pids
