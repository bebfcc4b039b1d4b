"""Where handyjobs keeps its registry and per-job folders (``$HANDYJOBS_HOME``)."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "HANDYJOBS_HOME"


def home() -> Path:
    """The state folder: ``$HANDYJOBS_HOME``, else the platform's user state dir."""
    value = os.environ.get(HOME_ENV)
    if value:
        return Path(value).expanduser().absolute()
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg:  # what platformdirs answers on Linux, without importing it on every command
        return Path(xdg) / "handyjobs"
    if os.name == "posix" and not _is_macos():
        return Path.home() / ".local" / "state" / "handyjobs"
    import platformdirs

    return Path(platformdirs.user_state_dir("handyjobs"))


def _is_macos() -> bool:
    import sys

    return sys.platform == "darwin"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) private to the user (0700) and return it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def registry_path(root: Path | None = None) -> Path:
    """The JSON registry of every job."""
    return (root or home()) / "registry.json"


def lock_path(root: Path | None = None) -> Path:
    """The lock file held around every read-modify-write of the registry."""
    return (root or home()) / "registry.lock"


def job_dir(name: str, root: Path | None = None) -> Path:
    """The per-job folder: log, run status files, launch environment."""
    return (root or home()) / "jobs" / name


def log_path(name: str, root: Path | None = None) -> Path:
    """The job's log, appended across restarts."""
    return job_dir(name, root) / "output.log"


def status_path(name: str, run_id: str, root: Path | None = None) -> Path:
    """The status file a run's runner writes: pids, start, end, exit code or signal."""
    return job_dir(name, root) / f"run-{run_id}.json"


def launch_env_path(name: str, run_id: str, root: Path | None = None) -> Path:
    """The caller's environment for one run, read and deleted by its runner (mode 0600)."""
    return job_dir(name, root) / f"run-{run_id}.env.json"


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` through a temp file and a rename, so readers never see half.

    The temp file is fsynced before the rename: a crash (or SIGKILL) at any point leaves either
    the old file or the new one, never a truncated mix.
    """
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def remove_stale_temps(path: Path) -> None:
    """Remove temp files next to ``path`` left by writers that were killed mid-write."""
    for tmp in path.parent.glob(f"{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (zombies included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but belongs to someone else
        return True
    return True
