"""GPU discovery: the fake file, NVML, nvidia-smi, one deadline; no policy (see core/booking.py).

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
for it (:func:`handyjobs.gpus.pidinfo.vouch`), and :attr:`Discovery.pids_comparable` says
whether a job's pid can be looked for among the driver's (:func:`leftovers` uses it).

GPU indices are nvidia-smi's (PCI bus order, which is also NVML's index order); jobs get
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so CUDA numbers the GPUs the same way. Nothing here imports
torch or initialises CUDA.

The records (:mod:`handyjobs.gpus.model`), the fake seam (:mod:`handyjobs.gpus.fake`), what
/proc says of a driver's pid (:mod:`handyjobs.gpus.pidinfo`) and ``--gpus`` parsing
(:mod:`handyjobs.gpus.select`) live beside this module. Which GPU counts as busy, allowed or
free for a job is decided in :mod:`handyjobs.core.booking`.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Collection, Iterable, Iterator, Mapping

from handyjobs.errors import UsageError
from handyjobs.gpus.fake import FAKE_ENV, read_fake
from handyjobs.gpus.model import Discovery, GpuInfo, GpuProcess
from handyjobs.gpus.pidinfo import comparable, described, host_pid_namespace, vouch
from handyjobs.structs import frozen, replace

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from handyjobs.gpus import nvml

TIMEOUT_ENV = "HANDYJOBS_GPU_TIMEOUT_S"
#: Seconds one look at the GPUs may take (NVML and nvidia-smi together); a wedged driver must
#: not hang `handyjobs list`, `stop` or a queued runner that looks every second.
DEFAULT_TIMEOUT_S = 5.0
#: Seconds nvidia-smi may take when it is asked on its own (:func:`query_nvidia_smi`).
SMI_TIMEOUT_S = 10.0
#: Memory above the level from before a job that still counts as given back: the driver's
#: own bookkeeping moves a few MiB between looks, while a CUDA context left behind is hundreds.
RELEASE_SLACK_MIB = 128


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
            from handyjobs.gpus import (
                nvml,  # lazy: NVML or nvidia-smi only when a look needs it (start-up)
            )

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


def _nvml_discovery(reading: nvml.Reading) -> Discovery:
    """Turn NVML's raw reading into GpuInfo, vouching for each process through /proc."""
    host = host_pid_namespace()
    vouched: list[bool] = []
    notes: list[str | None] = [reading.note]
    found = []
    for raw in reading.gpus:
        procs = []
        for rp in raw.processes:
            ok = vouch(rp.pid, raw.asked_at, host)
            vouched.append(ok)
            procs.append(described(rp.pid, rp.used_mib, ok, rp.nvml_name, prefer_proc=True))
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
        "nvml", tuple(found), note=_join(*notes), pids_comparable=comparable(host, vouched)
    )


def query_nvidia_smi(path: str | None = None, timeout_s: float = SMI_TIMEOUT_S) -> Discovery:
    """Ask nvidia-smi for the GPUs; source "nvidia-smi", or "none" with a note when unusable.

    ``timeout_s`` covers all of its queries together; :mod:`handyjobs.gpus.smi`
    runs and parses them.
    """
    exe = shutil.which("nvidia-smi", path=path)
    if exe is None:
        return Discovery("none", (), note="no nvidia-smi on PATH")
    from handyjobs.gpus import smi  # lazy: only when there is an nvidia-smi to run (start-up)

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
            ok = vouch(p.pid, reading.asked_at, host)
            vouched.append(ok)
            procs.append(described(p.pid, p.used_memory_mib, ok, p.name, prefer_proc=False))
        found.append(replace(g, processes=tuple(procs)))
    if not found:
        return Discovery("nvidia-smi", (), note="nvidia-smi reports no GPUs")
    return Discovery("nvidia-smi", tuple(found), pids_comparable=comparable(host, vouched))


# --------------------------------------------------------------------------- processes


# --------------------------------------------------------------------------- specs


# --------------------------------------------------------------------------- after a job


@frozen
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


__all__ = [
    "FAKE_ENV",
    "Discovery",
    "GpuInfo",
    "GpuProcess",
    "Leftover",
    "Watch",
    "discover",
    "leftovers",
    "watch",
]
