"""What a job's processes use: memory, CPU, GPUs; read from /proc and the driver, cheaply.

:class:`ProcTable` finds the processes of every run by the marker in their environment
(``HANDYJOBS_RUN_ID``), reading each process's environment once (a pid is known again by its
start time). :func:`usage` reads one process's memory and CPU time. :class:`Sampler` is the
runner's thread that looks at its run every second and adds up what it cost
(:class:`~handyjobs.core.records.Cost`); ``top`` uses the same pieces for its live view.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from handyjobs import procfs
from handyjobs.core import cgroups
from handyjobs.core.procs import MARKER_ENV
from handyjobs.core.records import Cost, GpuUse, NodeCost
from handyjobs.structs import frozen, replace

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from handyjobs.gpus.discovery import Discovery, Watch

#: Seconds between two looks at a run's processes.
INTERVAL_S = 1.0
_PROC = Path("/proc")
_MARKER = MARKER_ENV.encode() + b"="
_RESTART = b"TORCHELASTIC_RESTART_COUNT="


@frozen
class ProcUsage:
    """One process, one look: resident memory now and at its peak, CPU time so far."""

    pid: int
    rss_bytes: int
    hwm_bytes: int
    cpu_s: float


def usage(pid: int) -> ProcUsage | None:
    """Memory and CPU time of a process (None when it is gone or not readable)."""
    used = procfs.cpu_and_rss(pid)
    try:
        status = (_PROC / str(pid) / "status").read_bytes()
    except OSError:
        return None
    if used is None:
        return None
    cpu, rss = used
    hwm = rss
    for line in status.splitlines():
        if line.startswith(b"VmHWM:"):  # the peak RSS since it started: catches short spikes
            with contextlib.suppress(IndexError, ValueError):
                hwm = max(rss, int(line.split()[1]) * 1024)
            break
    return ProcUsage(pid, rss, hwm, cpu)


class ProcTable:
    """Processes by run id, found through /proc; each environment is read once per process."""

    def __init__(self) -> None:
        """Nothing known yet."""
        # pid -> (start time, run id or None, torchrun restart count)
        self._known: dict[int, tuple[bytes, str | None, int]] = {}

    def scan(self, only: str | None = None, by_group: bool = True) -> dict[str, list[int]]:
        """Live processes of every run (or only of run ``only``): run id -> pids.

        ``by_group`` False: by the marker alone, even where the run has a cgroup (the cgroup is
        the runner's, on its own machine; a scheduler's step runs elsewhere, outside it).
        """
        found: dict[str, list[int]] = {}
        seen: dict[int, tuple[bytes, str | None, int]] = {}
        me = os.getpid()
        group = cgroups.existing(only) if only is not None and by_group else None
        try:
            # A run with a cgroup: its members are the run's, whatever their environment.
            members = group.members() if group and group.dirs else None
            entries = [str(p) for p in members] if members is not None else os.listdir(_PROC)
        except OSError:
            return found
        young = _ticks_now() - 2 * procfs.TICKS  # started less than 2 s ago
        for entry in entries:
            if not entry.isdigit():
                continue
            pid = int(entry)
            start = _start(pid)
            if start is None or pid == me:
                continue
            known = self._known.get(pid)
            if known is None or known[0] != start:
                known = (start, *_marker(pid))
                if group and group.dirs and known[1] is None:
                    known = (start, only, known[2])  # a member that dropped the marker
            # A process caught between fork and exec still has its parent's environment: what
            # it carries is known only once it is a little older.
            if known[1] is not None or int(start) < young:
                seen[pid] = known
            run_id = known[1]
            if run_id is not None and (only is None or run_id == only):
                found.setdefault(run_id, []).append(pid)
        self._known = seen
        return found

    def restarts(self, pids: Iterable[int]) -> int:
        """The highest torchrun restart count among these processes."""
        return max((self._known[p][2] for p in pids if p in self._known), default=0)


def _ticks_now() -> int:
    """Clock ticks since boot now, the unit of a process's start time."""
    try:
        with open("/proc/uptime") as f:
            return int(float(f.read().split()[0]) * procfs.TICKS)
    except (OSError, ValueError, IndexError):
        return 0


def _start(pid: int) -> bytes | None:
    """The start-time field of ``/proc/PID/stat``, None for a zombie (it is not live)."""
    ticks = procfs.start_ticks(pid, live_only=True)
    return None if ticks is None else str(ticks).encode()


def _marker(pid: int) -> tuple[str | None, int]:
    """The run id a process carries, and its torchrun restart count."""
    try:
        environ = (_PROC / str(pid) / "environ").read_bytes()
    except OSError:  # another user's process, or gone
        return None, 0
    run_id = None
    restarts = 0
    for item in environ.split(b"\0"):
        if item.startswith(_MARKER):
            run_id = item[len(_MARKER) :].decode(errors="replace")
        elif item.startswith(_RESTART):
            with contextlib.suppress(ValueError):
                restarts = int(item[len(_RESTART) :])
    return run_id, restarts


def gpu_share(discovery: Discovery, pids: Iterable[int]) -> dict[int, tuple[int, int | None]]:
    """GPUs the processes ``pids`` are on: index -> (their memory in MiB, the GPU's use %)."""
    if not discovery.pids_comparable:
        return {}  # the driver's pids are another namespace's: ours cannot be told apart
    mine = set(pids)
    out: dict[int, tuple[int, int | None]] = {}
    for gpu in discovery.gpus:
        held = [p for p in gpu.processes if p.pid in mine]
        if held:
            memory = sum(p.used_memory_mib or 0 for p in held)
            out[gpu.index] = (memory, gpu.utilization_pct)
    return out


class _GpuTotals:
    def __init__(self) -> None:
        self.peak_mib = 0
        self.util_sum = 0.0
        self.util_n = 0
        self.samples = 0


class Sampler:
    """The runner's thread that samples its run's processes and adds up the cost."""

    def __init__(
        self,
        run_id: str,
        env: Mapping[str, str] | None = None,
        gpus: bool = True,
        interval_s: float = INTERVAL_S,
        within: int | None = None,
    ) -> None:
        """Set up; nothing runs until :meth:`start`. ``within``: count only that process and
        its descendants (one node's share of a run whose processes span several nodes)."""
        self.run_id, self.env, self.gpus, self.interval_s = run_id, env, gpus, interval_s
        self.within = within
        self.table = ProcTable()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples = 0
        self.peak_rss = 0
        self.hwm: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.restarts = 0
        self.gpu: dict[int, _GpuTotals] = {}

    def start(self) -> None:
        """Start looking, in a daemon thread (a wedged GPU driver never holds up the runner)."""
        self._thread = threading.Thread(target=self._loop, name="handyjobs-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        watch = None
        with contextlib.ExitStack() as stack:
            if self.gpus:
                from handyjobs.gpus import (
                    discovery as gpumod,  # lazy: GPUs are looked at only for jobs that use them
                )

                with contextlib.suppress(Exception):
                    watch = stack.enter_context(gpumod.watch(self.env))
            while not self._stop.wait(self.interval_s):
                try:
                    watch = self.sample(watch)
                except Exception:  # sampling is a nicety: it must never end the runner
                    continue

    def sample(self, watch: Watch | None = None) -> Watch | None:
        """One look at the run's processes (and GPUs); returns the GPU watch to keep using."""
        by_group = self.within is None
        pids = self.table.scan(self.run_id, by_group).get(self.run_id, [])
        if self.within is not None:
            pids = [p for p in pids if procfs.descends(p, self.within)]
        looks = [u for u in (usage(p) for p in pids) if u is not None]
        share: dict[int, tuple[int, int | None]] = {}
        if watch is not None and looks:
            try:
                discovery = watch.discover()
            except Exception:
                discovery = None
            if discovery is None or discovery.source == "none":
                watch = None  # no GPU here (or none readable): stop asking
            else:
                share = gpu_share(discovery, pids)
        with self._lock:
            self.samples += 1
            self.peak_rss = max(self.peak_rss, sum(u.rss_bytes for u in looks))
            for u in looks:
                self.hwm[u.pid] = max(self.hwm.get(u.pid, 0), u.hwm_bytes)
                self.cpu[u.pid] = max(self.cpu.get(u.pid, 0.0), u.cpu_s)
            self.restarts = max(self.restarts, self.table.restarts(pids))
            for index, (memory, util) in share.items():
                totals = self.gpu.setdefault(index, _GpuTotals())
                totals.peak_mib = max(totals.peak_mib, memory)
                totals.samples += 1
                if util is not None:
                    totals.util_sum += util
                    totals.util_n += 1
        return watch

    def finish(self, rusage: resource.struct_rusage | None = None) -> Cost:
        """Stop looking and add up: the main process's own accounting (``wait4``) included."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 1.0)
        with self._lock:
            cpu = sum(self.cpu.values())
            max_rss = max(self.hwm.values(), default=0)
            if rusage is not None:
                # wait4 counts the main process and every descendant it (or they) waited for:
                # torchrun waits for its wrappers, each wrapper for its worker.
                cpu = max(cpu, rusage.ru_utime + rusage.ru_stime)
                max_rss = max(max_rss, rusage.ru_maxrss * 1024)
            gpus = tuple(
                GpuUse(
                    index,
                    t.peak_mib,
                    round(t.util_sum / t.util_n, 1) if t.util_n else None,
                    t.samples,
                )
                for index, t in sorted(self.gpu.items())
            )
            return Cost(
                cpu_time_s=round(cpu, 3),
                peak_rss_bytes=max(self.peak_rss, 0),
                max_rss_bytes=max_rss,
                gpus=gpus,
                restarts=self.restarts,
                samples=self.samples,
                interval_s=self.interval_s,
            )


def node_cost(node: str, cost: Cost) -> NodeCost:
    """One node's measure of its share of a run, as that node reports it."""
    return NodeCost(node, cost.cpu_time_s, cost.peak_rss_bytes, cost.max_rss_bytes, cost.gpus)


def over_nodes(measured: Cost, reports: Sequence[NodeCost]) -> Cost:
    """A run's cost from its nodes' own reports (several from one node, as a requeued run
    starts again, add up); ``measured`` (what the runner saw) stands where none reported."""
    if not reports:
        return measured
    nodes: dict[str, NodeCost] = {}
    for r in reports:
        had = nodes.get(r.node)
        nodes[r.node] = (
            r
            if had is None
            else NodeCost(
                r.node,
                round(had.cpu_time_s + r.cpu_time_s, 3),
                max(had.peak_rss_bytes, r.peak_rss_bytes),
                max(had.max_rss_bytes, r.max_rss_bytes),
                had.gpus + r.gpus,
            )
        )
    each = tuple(nodes[k] for k in sorted(nodes))
    return replace(
        measured,
        cpu_time_s=round(sum(n.cpu_time_s for n in each), 3),
        # Each node's peak, added: the nodes peak at their own times, so at most this much.
        peak_rss_bytes=sum(n.peak_rss_bytes for n in each),
        max_rss_bytes=max(n.max_rss_bytes for n in each),
        gpus=(),  # per node: GPU 0 of one node is not GPU 0 of another
        nodes=each,
    )


def cpu_percent(before: Mapping[int, float], after: Mapping[int, float], wall_s: float) -> float:
    """CPU use between two looks, in percent of one core (a process new since counts later)."""
    if wall_s <= 0:
        return 0.0
    used = sum(max(0.0, cpu - before[pid]) for pid, cpu in after.items() if pid in before)
    return 100.0 * used / wall_s
