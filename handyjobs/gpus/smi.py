"""nvidia-smi as a source of GPUs: its CSV queries run under one deadline, and parsed.

:func:`handyjobs.gpus.discovery.query_nvidia_smi` uses it when NVML is missing or cannot list
processes
with this driver, and adds what /proc says of each process; nothing here looks at /proc.
Values nvidia-smi cannot give ("[N/A]", "[Not Supported]") read as unknown; one it reports
as a failure ("[Insufficient Permissions]") becomes the GPU's ``error``.
"""

from __future__ import annotations

import subprocess
import time

from handyjobs.gpus.model import GpuInfo, GpuProcess
from handyjobs.structs import frozen

GPU_QUERY = "index,uuid,name,memory.used,memory.total,utilization.gpu"
#: Asked after GPU_QUERY when nvidia-smi knows it (R450 and later).
MIG_FIELD = "mig.mode.current"
APPS_QUERY = "gpu_uuid,pid,used_memory,process_name"


@frozen
class Reading:
    """One look through nvidia-smi: the GPUs, their processes by GPU UUID, and when it asked."""

    gpus: list[GpuInfo]
    apps: dict[str, list[GpuProcess]]
    #: The boot clock just before the processes were asked for (to vouch for their pids).
    asked_at: float | None


def read(exe: str, timeout_s: float) -> Reading:
    """Run the queries within ``timeout_s`` in all; SmiFailed, or ValueError for garbled output."""
    from handyjobs.gpus.nvml import (
        boot_clock,  # lazy: nvml loads the driver library only when asked (start-up)
    )

    deadline = time.monotonic() + timeout_s
    mig_column = True
    try:
        gpus_csv = run(exe, f"--query-gpu={GPU_QUERY},{MIG_FIELD}", deadline, timeout_s)
    except SmiFieldUnknown:
        # a driver before R450 knows no MIG: ask without it
        mig_column = False
        gpus_csv = run(exe, f"--query-gpu={GPU_QUERY}", deadline, timeout_s)
    asked_at = boot_clock()
    apps_csv = run(exe, f"--query-compute-apps={APPS_QUERY}", deadline, timeout_s)
    return Reading(parse_gpus(gpus_csv, mig_column=mig_column), parse_apps(apps_csv), asked_at)


class SmiFailed(Exception):
    """nvidia-smi could not answer; the message is the note for the user."""


class SmiFieldUnknown(SmiFailed):
    """This nvidia-smi does not know a field that was asked for."""


def run(exe: str, query: str, deadline: float, budget_s: float) -> str:
    """Run one nvidia-smi CSV query before ``deadline`` (of ``budget_s`` in all); its stdout."""
    argv = [exe, query, "--format=csv,noheader,nounits"]
    late = f"nvidia-smi did not answer within {budget_s:g} s"
    left = deadline - time.monotonic()
    if left <= 0:
        raise SmiFailed(late)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=left, check=False)
    except subprocess.TimeoutExpired as e:
        raise SmiFailed(late) from e
    except OSError as e:
        raise SmiFailed(f"cannot run nvidia-smi ({e.strerror})") from e
    if done.returncode != 0:
        text = (done.stdout + done.stderr).strip()
        first = text.splitlines()[0] if text else f"exit code {done.returncode}"
        # "No devices were found" comes with a non-zero exit code: that is simply no GPU
        if first.lower().startswith("no devices were found"):
            return ""
        if "is not a valid field to query" in text:
            raise SmiFieldUnknown(first)
        raise SmiFailed(f"nvidia-smi failed ({first})")
    return done.stdout


#: Bracketed nvidia-smi values that only mean "this GPU has no such value".
_ABSENT = frozenset({"n/a", "not supported", "not found"})


def _value(text: str) -> str | None:
    """Return a stripped nvidia-smi CSV value, or None for "[N/A]", "[Not Supported]" and kin."""
    value = text.strip()
    if not value or value.startswith("[") or value.upper() == "N/A":
        return None
    return value


def _problem(text: str) -> str | None:
    """The failure a bracketed value reports ("[Insufficient Permissions]"), else None."""
    value = text.strip()
    if value.startswith("[") and value.endswith("]"):
        inner = value[1:-1].strip()
        if inner.lower() not in _ABSENT:
            return inner
    return None


def _int(text: str, what: str) -> int | None:
    """Return an integer nvidia-smi value, None when unavailable; ValueError when garbled."""
    value = _value(text)
    if value is None:
        return None
    try:
        return int(float(value)) if "." in value else int(value)
    except ValueError:
        raise ValueError(f"{what} is {value!r}, not a number") from None


def _lines(csv_text: str) -> list[str]:
    """Return the data lines of nvidia-smi CSV output (no blanks, no "No devices" notice)."""
    lines = []
    for line in csv_text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.lower().startswith(("no devices", "no running")):
            continue
        lines.append(stripped)
    return lines


def parse_gpus(csv_text: str, *, mig_column: bool = False) -> list[GpuInfo]:
    """Parse ``nvidia-smi --query-gpu=index,uuid,name,memory.used,memory.total,utilization.gpu``.

    With ``mig_column`` the lines end with ``mig.mode.current`` too ("Enabled", "Disabled").
    """
    tail = 4 if mig_column else 3
    gpus = []
    for line in _lines(csv_text):
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 3 + tail:
            raise ValueError(f"expected {3 + tail} fields in {line!r}")
        mig = False
        if mig_column:
            mode = _value(fields.pop())
            if mode is not None and mode.lower() not in ("enabled", "disabled"):
                raise ValueError(f"mig.mode.current is {mode!r}, not Enabled or Disabled")
            mig = mode is not None and mode.lower() == "enabled"
        # the name sits in the middle and is the only field that could hold a comma
        index_s, uuid_s = fields[0], fields[1]
        used_s, total_s, util_s = fields[-3:]
        name = ", ".join(fields[2:-3])
        index = _int(index_s, "index")
        uuid = _value(uuid_s)
        if index is None or uuid is None:
            raise ValueError(f"no index or uuid in {line!r}")
        problem = _problem(used_s) or _problem(total_s)
        gpus.append(
            GpuInfo(
                index=index,
                uuid=uuid,
                name=_value(name) or "unknown GPU",
                # unknown memory reads as 0; such a GPU is judged by its processes alone
                memory_used_mib=_int(used_s, "memory.used") or 0,
                memory_total_mib=_int(total_s, "memory.total") or 0,
                utilization_pct=_int(util_s, "utilization.gpu"),
                mig=mig,
                error=None if problem is None else f"memory use: {problem}",
            )
        )
    return sorted(gpus, key=lambda g: g.index)


def parse_apps(csv_text: str) -> dict[str, list[GpuProcess]]:
    """Parse ``nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory,process_name`` by UUID."""
    apps: dict[str, list[GpuProcess]] = {}
    for line in _lines(csv_text):
        # process_name is last and may itself contain commas (it is a path)
        fields = line.split(",", 3)
        if len(fields) < 4:
            raise ValueError(f"expected 4 fields in {line!r}")
        uuid = _value(fields[0])
        pid = _int(fields[1], "pid")
        if uuid is None or pid is None:
            raise ValueError(f"no GPU uuid or pid in {line!r}")
        proc = GpuProcess(
            pid=pid,
            used_memory_mib=_int(fields[2], "used_memory"),
            name=_value(fields[3]),
        )
        apps.setdefault(uuid, []).append(proc)
    return apps
