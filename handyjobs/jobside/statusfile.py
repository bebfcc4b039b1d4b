"""What a runner writes: its status file (with room kept for the outcome), its log lines, and
its folds into the registry, each written so that a full disk cannot cost the outcome.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from handyjobs.core import paths, procs, registry
from handyjobs.core.records import JobRecord, LaunchEnv, RunStatus
from handyjobs.errors import StorageError

#: Bytes the status file always takes, so the outcome can be written in place on a full disk.
STATUS_SIZE = 4096
#: Bytes set aside on the disk while the run lasts, given back to write the outcome.
RESERVE_SIZE = 64 * 1024
#: Seconds between two tries to store the outcome while the disk is full.
DISK_RETRY_S = 2.0


class StatusFile:
    """The run's status file, with room reserved so that the outcome always fits."""

    def __init__(self, root: Path, name: str, run_id: str) -> None:
        """Start the status with this runner's identity; nothing is written yet."""
        self.root, self.name = root, name
        self.path = paths.status_path(name, run_id, root)
        self.reserve_path = paths.reserve_path(name, run_id, root)
        me = procs.proc_id(os.getpid())
        assert me is not None
        self.status = RunStatus(run_id=run_id, runner=me, boot_id=paths.boot_id())

    def _bytes(self) -> bytes:
        data = json.dumps(self.status.to_dict()).encode()
        return data + b" " * max(0, STATUS_SIZE - len(data) - 1) + b"\n"

    def write(self) -> None:
        """Replace the file atomically; on a full disk, overwrite it in place or use the room."""
        data = self._bytes()
        try:
            paths.ensure_private_dir(self.path.parent)  # the job's folder may have been deleted
            paths.write_atomic(self.path, data)
            return
        except (OSError, StorageError) as exc:
            if isinstance(exc, OSError) and not paths.is_disk_full(exc):
                raise
        # The file already holds STATUS_SIZE bytes of blocks: writing over them needs no room.
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_WRONLY)
            try:
                if os.fstat(fd).st_size >= len(data):
                    os.pwrite(fd, data, 0)
                    os.fsync(fd)
                    return
            finally:
                os.close(fd)
        self.release()  # give back the reserved room and try once more
        paths.write_atomic(self.path, data)

    def reserve(self) -> None:
        """Set room aside for the end of the run (best effort: a full disk may refuse it)."""
        with contextlib.suppress(OSError):
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_SIZE)
            finally:
                os.close(fd)

    def release(self) -> None:
        """Give the reserved room back."""
        with contextlib.suppress(OSError):
            os.unlink(self.reserve_path)


def say(log_fd: int, text: str) -> None:
    """A handyjobs line in the log and on the pane (dimmed there)."""
    line = f"[handyjobs] {text}\n".encode(errors="replace")
    with contextlib.suppress(OSError):  # the log may be unwritable; the pane still shows it
        paths.write_all(log_fd, line)
    with contextlib.suppress(OSError):  # the pane may be gone; the log has the line
        os.write(1, b"\x1b[2m" + line + b"\x1b[0m" if os.isatty(1) else line)


def open_log(path: str) -> tuple[int, str | None]:
    """The log, opened for appending; /dev/null and the reason when it cannot be opened."""
    try:
        paths.ensure_private_dir(Path(path).parent)
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), None
    except (OSError, StorageError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        return os.open(os.devnull, os.O_WRONLY), f"cannot open the log: {why}"


def store(root: Path, step: str, fn: Callable[[registry.Registry], None], log_fd: int) -> None:
    """Run a registry update, retrying while the disk is full (the status file has the truth)."""
    said = False
    for _ in range(5):
        try:
            with registry.locked(root) as reg:
                fn(reg)
            return
        except StorageError as exc:
            if not said:
                say(log_fd, f"cannot {step} yet ({exc}); retrying")
                said = True
            time.sleep(DISK_RETRY_S)
    say(log_fd, f"gave up trying to {step}; `handyjobs list` reads the outcome from its file")


def own_record(root: Path, name: str, run_id: str) -> JobRecord | None:
    """The job's record if it still names this run; read under the shared lock."""
    with registry.shared(root):
        record = registry.load_one(name, root)
    if record is None or record.current.run_id != run_id:
        return None
    return record


def launch_env(root: Path, name: str) -> dict[str, str]:
    """The environment of the shell that started the job, from its 0600 file."""
    path = paths.env_path(name, root)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        # The start that saved this run was killed before it moved the environment into
        # place: finish its move under the lock, as the next start would, then read it.
        from handyjobs.core import starting  # lazy: only after a start that was killed

        with registry.locked(root) as reg:
            starting.sweep_pending(reg)
        data = path.read_bytes()
    found = LaunchEnv.from_dict(json.loads(data))
    if found.name != name:
        raise ValueError(f"the environment file belongs to job {found.name}")
    return found.env
