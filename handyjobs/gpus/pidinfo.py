"""What /proc says of a pid the driver reported: whether it is ours to describe, its user and name.

Older drivers report pids in the host's pid namespace, which inside a container are not this
namespace's pids: a pid is described only when /proc vouches for it (:func:`vouch`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

from handyjobs import procfs
from handyjobs.gpus.model import GpuProcess

# PROC_PID_INIT_INO: the inode of the initial (host) pid namespace, fixed by the kernel.
_INIT_PID_NS_INO = 0xEFFFFFFC


def host_pid_namespace() -> bool:
    """Whether this process lives in the host's (initial) pid namespace, as the driver does."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino == _INIT_PID_NS_INO
    except OSError:
        return False  # no /proc/self/ns: cannot tell, so do not assume the pids match


def comparable(host: bool, vouched: Sequence[bool]) -> bool:
    """Whether the driver's pids are ours: in the host namespace, or /proc vouched for each."""
    # Outside the host namespace an older driver reports host pids; a newer one translates them,
    # and then /proc vouches for every pid it lists. With nothing listed, nothing shows which.
    return host or (bool(vouched) and all(vouched))


def vouch(pid: int, asked_at: float | None, host: bool) -> bool:
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


def described(
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


def with_proc_info(proc: GpuProcess) -> GpuProcess:
    """Fill in a fake process's user and short name from /proc where they are missing."""
    user = proc.user if proc.user is not None else _proc_user(proc.pid)
    # NVML and nvidia-smi give paths ("/opt/conda/bin/python"); people know the last part
    name = (os.path.basename(proc.name) or None) if proc.name else _proc_comm(proc.pid)
    return GpuProcess(proc.pid, proc.used_memory_mib, user, name)


def _proc_start_s(pid: int) -> float | None:
    """When process ``pid`` started, in seconds since boot; None when /proc has no such process."""
    ticks = procfs.start_ticks(pid)
    return None if ticks is None else ticks / procfs.TICKS


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
