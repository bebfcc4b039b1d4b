"""GPU discovery (fake file, NVML, nvidia-smi) and GPU spec parsing; no policy (see booking.py).

Discovery goes through :func:`discover` (one look) or :func:`watch` (many looks with NVML
started once), which try in order:

1. ``HANDYJOBS_FAKE_GPUS`` (testing seam): the path of a JSON file of canned GPUs, read afresh
   on every look so a test can rewrite it to free a GPU. Never consulted unless the variable is set.
2. NVML through ``pynvml`` (package ``nvidia-ml-py``), imported only inside a look; the reading
   itself lives in :mod:`handyjobs.gpus.nvml`
   (older-driver fallbacks, per-GPU errors, the deadline).
3. ``nvidia-smi --query-gpu=... --format=csv,noheader,nounits`` and ``--query-compute-apps=...``,
   also when NVML cannot list processes at all with this driver.
4. Nothing: ``Discovery("none", (), note=...)``, where the note says why. "No GPU" never raises.

Each look waits ``HANDYJOBS_GPU_TIMEOUT_S`` (default 5) seconds at most: a GPU that does not
answer in time is reported with an ``error`` naming the NVML call it hangs in, the other GPUs
are still reported, and the note says which GPU hangs. A wedged driver never hangs the caller.

Process ids come from the driver. Older drivers report them in the host's pid namespace, which
inside a container are not this namespace's pids; newer ones translate them and hide what the
container cannot see. A process's user and name are filled in from /proc only when /proc vouches
for it (:func:`_vouch`), and :attr:`Discovery.pids_comparable` says whether a job's pid can be
looked for among the driver's (:func:`leftovers` uses it).

GPU indices are nvidia-smi's (PCI bus order, which is also NVML's index order); jobs get
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so CUDA numbers the GPUs the same way. Nothing here imports
torch or initialises CUDA.

JSON schema of :meth:`GpuInfo.to_dict` (used by ``handyjobs gpus --json``); a fake GPU file has
the same shape, ``{"gpus": [<gpu>, ...]}``::

    {
      "index": 0,                          # int, nvidia-smi's index
      "uuid": "GPU-6a1c...",               # str ("" when unreadable); a fake may leave it out:
                                           #   "GPU-fake-<index>"
      "name": "NVIDIA A100-SXM4-80GB",     # str
      "memory_used_mib": 3,                # int; without what the driver reserves, as nvidia-smi
      "memory_total_mib": 81920,           # int
      "utilization_pct": 0,                # int or null (unknown, e.g. in MIG mode)
      "mig": false,                        # bool: MIG mode is on (a fake may leave it out)
      "error": null,                       # str or null: why (part of) this GPU could not be read
      "processes": [                       # compute processes; a fake may leave it out: []
        {"pid": 4242,                      # int, the driver's pid
         "used_memory_mib": 5000,          # int or null (unknown)
         "user": "alice",                  # str or null (null unless /proc vouches for the pid);
                                           #   a fake may leave it out: read from /proc
         "name": "python"}                 # str or null, likewise
      ]
    }

:meth:`Discovery.to_dict` wraps these as
``{"source": ..., "note": ..., "pids_comparable": ..., "gpus": [<gpu>, ...]}``; a fake file may
set ``"pids_comparable": false`` at the top to play a container whose driver reports host pids.

Which GPU counts as busy, allowed or free for a job is decided in :mod:`handyjobs.core.booking`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from handyjobs.errors import UsageError

if TYPE_CHECKING:
    from handyjobs.gpus import nvml

FAKE_ENV = "HANDYJOBS_FAKE_GPUS"
TIMEOUT_ENV = "HANDYJOBS_GPU_TIMEOUT_S"
#: Seconds one look at the GPUs may take (NVML and nvidia-smi together); a wedged driver must
#: not hang `handyjobs list`, `stop` or a queued runner that looks every second.
DEFAULT_TIMEOUT_S = 5.0
#: Seconds nvidia-smi may take when it is asked on its own (:func:`query_nvidia_smi`).
SMI_TIMEOUT_S = 10.0
#: Memory above the level from before a job that still counts as given back: the driver's
#: own bookkeeping moves a few MiB between looks, while a CUDA context left behind is hundreds.
RELEASE_SLACK_MIB = 128

_INDEX_RE = re.compile(r"[0-9]+")
# GPU-<uuid>, MIG-<uuid> and the older MIG-GPU-<uuid>/<gi>/<ci>; fake files use GPU-fake-<n>.
_UUID_RE = re.compile(r"(GPU|MIG)-[A-Za-z0-9_/-]+")
# PROC_PID_INIT_INO: the inode of the initial (host) pid namespace, fixed by the kernel.
_INIT_PID_NS_INO = 0xEFFFFFFC


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
    #: The driver's pids are this pid namespace's, so a job's pid can be looked for among them.
    #: False in a container whose driver reports the host's pids (see :func:`leftovers`).
    pids_comparable: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Return the discovery as JSON-ready data (schema in the module docstring)."""
        return {
            "source": self.source,
            "note": self.note,
            "pids_comparable": self.pids_comparable,
            "gpus": [g.to_dict() for g in self.gpus],
        }

    def by_index(self) -> dict[int, GpuInfo]:
        """Return the GPUs keyed by index."""
        return {g.index: g for g in self.gpus}


# --------------------------------------------------------------------------- discovery


def timeout_from_env(env: Mapping[str, str] | None = None) -> float:
    """``HANDYJOBS_GPU_TIMEOUT_S`` (default 5): the seconds one look at the GPUs may take."""
    env = os.environ if env is None else env
    text = env.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UsageError(
            f"{TIMEOUT_ENV}={text!r} is not a positive number of seconds; "
            f"set it to e.g. {DEFAULT_TIMEOUT_S:g} or unset it"
        )
    return value


def discover(env: Mapping[str, str] | None = None, *, timeout_s: float | None = None) -> Discovery:
    """Find the GPUs: the fake file when set, else NVML, else nvidia-smi, else source "none".

    Waits ``timeout_s`` (default: ``HANDYJOBS_GPU_TIMEOUT_S``, else 5 s) at most.
    """
    with watch(env, timeout_s=timeout_s) as looking:
        return looking.discover()


@contextlib.contextmanager
def watch(
    env: Mapping[str, str] | None = None, *, timeout_s: float | None = None
) -> Iterator[Watch]:
    """Look at the GPUs repeatedly with NVML started once: ``with watch() as w: w.discover()``."""
    looking = Watch(env, timeout_s=timeout_s)
    try:
        yield looking
    finally:
        looking.close()


class Watch:
    """Repeated discovery over one NVML session; each :meth:`discover` has its own deadline."""

    def __init__(
        self, env: Mapping[str, str] | None = None, *, timeout_s: float | None = None
    ) -> None:
        """Read the settings from ``env`` (default: this process's environment); start nothing."""
        env = os.environ if env is None else env
        self._fake = env.get(FAKE_ENV, "")
        self._path = env.get("PATH")
        self.timeout_s = timeout_from_env(env) if timeout_s is None else timeout_s
        self._session: nvml.Session | None = None

    def discover(self) -> Discovery:
        """One look at the GPUs (NVML is started on the first and kept until :meth:`close`)."""
        if self._fake:
            return read_fake(self._fake)
        deadline = time.monotonic() + self.timeout_s
        if self._session is None:
            from handyjobs.gpus import nvml

            self._session = nvml.Session(self.timeout_s)
        reading = self._session.read()
        if reading.hung and not reading.ok:
            # nvidia-smi asks the same wedged driver: it would only hang too
            return Discovery("none", (), note=reading.note)
        if reading.ok:
            found = _nvml_discovery(reading)
            lacking = next((g.lacks for g in reading.gpus if g.lacks), None)
            if lacking is None:
                return found
            smi = query_nvidia_smi(self._path, timeout_s=_left(deadline))
            if smi.source == "nvidia-smi" and smi.gpus:
                return replace(smi, note=_join(f"used nvidia-smi: {lacking}", smi.note))
            return found
        smi = query_nvidia_smi(self._path, timeout_s=_left(deadline))
        if smi.source == "nvidia-smi":
            return smi
        return Discovery("none", (), note=f"{reading.note} and {smi.note}")

    def close(self) -> None:
        """Shut NVML down (unless a call into it still has not returned)."""
        if self._session is not None:
            self._session.close()
            self._session = None


def _left(deadline: float) -> float:
    """The seconds left until ``deadline``, but enough for nvidia-smi to answer at all."""
    return max(0.5, deadline - time.monotonic())


def _join(*notes: str | None) -> str | None:
    """Notes joined with "; ", or None when there are none."""
    text = "; ".join(n for n in notes if n)
    return text or None


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
    comparable = data.get("pids_comparable", True) if isinstance(data, dict) else True
    if not isinstance(comparable, bool):
        raise UsageError(
            f"{FAKE_ENV}={path}: pids_comparable must be true or false, not {comparable!r}; "
            f"fix the file or unset {FAKE_ENV}"
        )
    return Discovery("fake", gpus, pids_comparable=comparable)


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


def query_nvml(timeout_s: float = DEFAULT_TIMEOUT_S) -> Discovery:
    """Ask NVML for the GPUs; source "nvml", or "none" with a note when NVML is unusable."""
    from handyjobs.gpus import nvml

    session = nvml.Session(timeout_s)
    try:
        reading = session.read()
    finally:
        session.close()
    if not reading.ok:
        return Discovery("none", (), note=reading.note)
    return _nvml_discovery(reading)


def _nvml_discovery(reading: nvml.Reading) -> Discovery:
    """Turn NVML's raw reading into GpuInfo, vouching for each process through /proc."""
    host = host_pid_namespace()
    vouched: list[bool] = []
    notes: list[str | None] = [reading.note]
    found = []
    for raw in reading.gpus:
        procs = []
        for rp in raw.processes:
            ok = _vouch(rp.pid, raw.asked_at, host)
            vouched.append(ok)
            procs.append(_described(rp.pid, rp.used_mib, ok, rp.nvml_name, prefer_proc=True))
        errors = list(raw.errors)
        if raw.lacks:
            errors.append(f"process list: {raw.lacks}")
        if raw.dropped_pids:
            # nvidia-ml-py and the driver disagree on the process struct: phantom processes
            pids = ", ".join(str(p) for p in raw.dropped_pids)
            notes.append(f"GPU {raw.index}: dropped impossible pids {pids} from {raw.process_func}")
        found.append(
            GpuInfo(
                index=raw.index,
                uuid=raw.uuid,
                name=raw.name,
                memory_used_mib=raw.used_mib,
                memory_total_mib=raw.total_mib,
                utilization_pct=raw.utilization_pct,
                processes=tuple(procs),
                mig=raw.mig,
                error="; ".join(errors) or None,
            )
        )
    if not found:
        return Discovery("nvml", (), note="the NVIDIA driver reports no GPUs")
    return Discovery(
        "nvml", tuple(found), note=_join(*notes), pids_comparable=_comparable(host, vouched)
    )


def query_nvidia_smi(path: str | None = None, timeout_s: float = SMI_TIMEOUT_S) -> Discovery:
    """Ask nvidia-smi for the GPUs; source "nvidia-smi", or "none" with a note when unusable.

    ``timeout_s`` covers all of its queries together; :mod:`handyjobs.gpus.smi`
    runs and parses them.
    """
    from handyjobs.gpus import smi

    exe = shutil.which("nvidia-smi", path=path)
    if exe is None:
        return Discovery("none", (), note="no nvidia-smi on PATH")
    try:
        reading = smi.read(exe, timeout_s)
    except smi.SmiFailed as e:
        return Discovery("none", (), note=str(e))
    except ValueError as e:
        return Discovery("none", (), note=f"cannot read nvidia-smi's output ({e})")
    host = host_pid_namespace()
    vouched: list[bool] = []
    found = []
    for g in reading.gpus:
        procs = []
        for p in reading.apps.get(g.uuid, ()):
            ok = _vouch(p.pid, reading.asked_at, host)
            vouched.append(ok)
            procs.append(_described(p.pid, p.used_memory_mib, ok, p.name, prefer_proc=False))
        found.append(replace(g, processes=tuple(procs)))
    if not found:
        return Discovery("nvidia-smi", (), note="nvidia-smi reports no GPUs")
    return Discovery("nvidia-smi", tuple(found), pids_comparable=_comparable(host, vouched))


# --------------------------------------------------------------------------- processes


def host_pid_namespace() -> bool:
    """Whether this process lives in the host's (initial) pid namespace, as the driver does."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino == _INIT_PID_NS_INO
    except OSError:
        return False  # no /proc/self/ns: cannot tell, so do not assume the pids match


def _comparable(host: bool, vouched: Sequence[bool]) -> bool:
    """Whether the driver's pids are ours: in the host namespace, or /proc vouched for each."""
    # Outside the host namespace an older driver reports host pids; a newer one translates them,
    # and then /proc vouches for every pid it lists. With nothing listed, nothing shows which.
    return host or (bool(vouched) and all(vouched))


def _vouch(pid: int, asked_at: float | None, host: bool) -> bool:
    """Whether /proc vouches that ``pid`` is the process the driver listed under that number.

    It must exist and have started before the driver was asked (else the pid was reused).
    Outside the host pid namespace, where the driver may speak of another namespace's pids,
    it must also hold an NVIDIA device open (readable for our own processes, or as root).
    """
    started = _proc_start_s(pid)
    if started is None:
        return False
    if asked_at is not None and started > asked_at:
        return False
    if host:
        return True
    return _holds_nvidia_device(pid) is True


def _described(
    pid: int, used_mib: int | None, vouched: bool, driver_name: str | None, *, prefer_proc: bool
) -> GpuProcess:
    """A process with its user and short name when /proc vouches for it, else neither."""
    if not vouched:
        # a name or user read for this number would be another process's: say nothing
        return GpuProcess(pid, used_mib)
    driver = (os.path.basename(driver_name) or None) if driver_name else None
    comm = _proc_comm(pid)
    name = (comm or driver) if prefer_proc else (driver or comm)
    return GpuProcess(pid, used_mib, _proc_user(pid), name)


def _with_proc_info(proc: GpuProcess) -> GpuProcess:
    """Fill in a fake process's user and short name from /proc where they are missing."""
    user = proc.user if proc.user is not None else _proc_user(proc.pid)
    # NVML and nvidia-smi give paths ("/opt/conda/bin/python"); people know the last part
    name = (os.path.basename(proc.name) or None) if proc.name else _proc_comm(proc.pid)
    return GpuProcess(proc.pid, proc.used_memory_mib, user, name)


def _proc_start_s(pid: int) -> float | None:
    """When process ``pid`` started, in seconds since boot; None when /proc has no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # the command name in parentheses may hold spaces; the fields after it are plain
        fields = stat[stat.rfind(b")") + 2 :].split()
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _holds_nvidia_device(pid: int) -> bool | None:
    """Whether the process has an NVIDIA device file open; None when its fds are not readable."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return None  # another user's process (without root), or gone
    for fd in fds:
        with contextlib.suppress(OSError):
            # every CUDA process holds /dev/nvidiactl and /dev/nvidia<N> (or -caps for MIG)
            if os.readlink(f"{fd_dir}/{fd}").startswith("/dev/nvidia"):
                return True
    return False


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


# --------------------------------------------------------------------------- after a job


@dataclass(frozen=True)
class Leftover:
    """What a GPU still holds of a job that ended, measured against a look from before it."""

    gpu: int
    #: pids the driver still lists (the job's own, or, when pids are not comparable, every
    #: process that was not there before)
    pids: tuple[int, ...] = ()
    #: memory in use above the look from before, beyond RELEASE_SLACK_MIB (0: given back)
    extra_memory_mib: int = 0


def leftovers(
    before: Discovery | None,
    now: Discovery,
    indices: Iterable[int],
    job_pids: Collection[int],
    *,
    slack_mib: int = RELEASE_SLACK_MIB,
) -> list[Leftover]:
    """What the GPUs ``indices`` still hold of a job, comparing ``now`` with ``before`` it.

    Where the driver's pids are ours (``pids_comparable``) the job's pids are looked for;
    where they are not (a container on an older driver), every process that ``before`` did not
    list counts, since the job's pids cannot be recognised there. Memory counts only with a
    ``before``. GPUs that ``now`` does not list are left out: see ``now.note`` for why.
    """
    comparable = now.pids_comparable and (before is None or before.pids_comparable)
    was = {} if before is None else before.by_index()
    ours = set(job_pids)
    found = []
    for index, gpu in sorted(now.by_index().items()):
        if index not in set(indices):
            continue
        old = was.get(index)
        if comparable:
            pids = sorted({p.pid for p in gpu.processes} & ours)
        else:
            known = set() if old is None else {p.pid for p in old.processes}
            pids = sorted({p.pid for p in gpu.processes} - known)
        extra = 0 if old is None else gpu.memory_used_mib - old.memory_used_mib
        if comparable and old is not None:
            # Processes of others that came while the job ran hold their own memory: it is
            # not the job's. One whose memory is unknown makes the rise impossible to assign.
            known = {p.pid for p in old.processes}
            newcomers = [p for p in gpu.processes if p.pid not in known and p.pid not in ours]
            if any(p.used_memory_mib is None for p in newcomers):
                extra = 0
            else:
                extra -= sum(p.used_memory_mib or 0 for p in newcomers)
        extra = extra if extra > slack_mib else 0
        if pids or extra:
            found.append(Leftover(index, tuple(pids), extra))
    return found
