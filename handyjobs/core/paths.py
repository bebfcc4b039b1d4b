"""Where handyjobs keeps its state (``$HANDYJOBS_HOME``), and how it writes files there safely.

Layout::

    $HANDYJOBS_HOME/              0700 when handyjobs makes it; refused if others may write it
      registry.json               active jobs (queued, running), next id, schema version
      history.jsonl               finished jobs, one JSON record a line, appended
      history.idx                 where each name's lines are in history.jsonl (advisory)
      scheduler.lock              held by the one queued runner that schedules the queue
      sweep.lock                  held by a sweep while it picks its names and group
      pending/RUNID.env.json      a start's environment before its record is saved (swept)
      jobs/NAME/output.log        every byte the job printed, across restarts (.1: before
                                  it reached HANDYJOBS_LOG_MAX_MB)
      jobs/NAME/rank-N.log        every byte rank N printed, in a job of several processes
      jobs/NAME/env.json          the caller's environment, kept for restarts (0600)
      jobs/NAME/run-RUNID.json    the runner's status: pids, start, outcome (room reserved)
      removed/NAME/STAMP/         the folder of a removed job of that name, kept (``rm``
                                  without --logs): a new job of the name starts afresh

Every folder is 0700 and every file 0600 whatever the umask. Every write that replaces a file
goes through a temp file and a rename, and a failed write leaves no temp file behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from handyjobs.errors import UsageError, storage_error

HOME_ENV = "HANDYJOBS_HOME"


def home() -> Path:
    """The state folder: ``$HANDYJOBS_HOME``, else the platform's user state dir; a path that
    is not UTF-8 is refused (records hold it as text: the logs' paths)."""
    found = _home()
    try:
        str(found).encode()
    except UnicodeEncodeError:
        shown = ascii(os.fsencode(str(found)))[2:-1]
        raise UsageError(
            f"the state folder '{shown}' is not valid UTF-8; set {HOME_ENV} to a path of UTF-8"
            " names"
        ) from None
    return found


def _home() -> Path:
    value = os.environ.get(HOME_ENV)
    if value:
        return Path(value).expanduser().absolute()
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg:  # what platformdirs answers on Linux, without importing it on every command
        return Path(xdg) / "handyjobs"
    if os.name == "posix" and not _is_macos():
        return Path.home() / ".local" / "state" / "handyjobs"
    import platformdirs  # lazy: only when the state folder is not set (start-up)

    return Path(platformdirs.user_state_dir("handyjobs"))


def _is_macos() -> bool:
    import sys  # lazy: only when the state folder is not set (start-up)

    return sys.platform == "darwin"


def check_home(root: Path) -> None:
    """Refuse a state folder that is not a folder, or that others could write into.

    A missing folder is fine (writers create it). Nothing is ever chmodded here: a folder the
    user pointed us at stays as it is, and one that others may write is refused, because they
    could replace the registry or plant a job's environment.
    """
    try:
        st = root.stat()
    except FileNotFoundError:
        if root.is_symlink():
            raise UsageError(
                f"{HOME_ENV}={root} is a symbolic link to nothing; fix the link or point "
                f"{HOME_ENV} at a folder"
            ) from None
        return
    except NotADirectoryError:
        raise UsageError(
            f"{HOME_ENV}={root}: a part of that path is a file; point {HOME_ENV} at a folder"
        ) from None
    except OSError as exc:
        raise storage_error(exc, "read the state folder") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{HOME_ENV}={root} is a file, not a folder; point {HOME_ENV} at a folder")
    if st.st_mode & 0o022 or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
        raise UsageError(
            f"{HOME_ENV}={root} is writable by others or not yours (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); point {HOME_ENV} at a private folder "
            "(mkdir -m 700)"
        )


def ensure_home(root: Path | None = None) -> Path:
    """The state folder, created 0700 (with any missing parents) if needed, and checked."""
    base = root or home()
    check_home(base)
    if not base.exists():
        _make_dirs(base)
    return base


def _make_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, each 0700 whatever the umask."""
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            continue
        except OSError as exc:
            raise storage_error(exc, "create the folder") from exc
        # mkdir's mode is masked by the umask; chmod is not.
        with contextlib.suppress(OSError):
            os.chmod(folder, 0o700)


def ensure_private_dir(path: Path) -> Path:
    """Create a folder inside the state folder (and parents) private to the user (0700).

    A link where the folder (or its parent: ``jobs/``, ``removed/NAME``) should be is refused,
    never followed: a chmod or a write through it would change what it points to.
    """
    # The state folder itself may be a link (the user's choice, checked by check_home);
    # the folders handyjobs makes inside it never are.
    ours = path.parent.name in ("jobs", "removed")
    for folder in (path.parent, path) if ours else (path,):
        try:
            if stat.S_ISLNK(folder.lstat().st_mode):
                raise UsageError(
                    f"{folder} is a link ({os.readlink(folder)}), not a folder; handyjobs never "
                    "writes through a link there: remove the link and try again"
                )
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise storage_error(exc, "read the folder") from exc
    _make_dirs(path)
    try:
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{path} is not a folder; move it away and try again")
        if st.st_mode & 0o077:
            path.chmod(0o700)  # ours (inside our state folder), made by an older release
    except OSError as exc:
        raise storage_error(exc, "set up the folder") from exc
    return path


def registry_path(root: Path | None = None) -> Path:
    """The JSON registry of active jobs."""
    return (root or home()) / "registry.json"


def history_path(root: Path | None = None) -> Path:
    """The append-only file of finished jobs."""
    return (root or home()) / "history.jsonl"


def history_index_path(root: Path | None = None) -> Path:
    """The index of the history: where each job's lines are."""
    return (root or home()) / "history.idx"


def lock_path(root: Path | None = None) -> Path:
    """The lock file used where a folder cannot be locked (some network file systems)."""
    return (root or home()) / "registry.lock"


def scheduler_lock_path(root: Path | None = None) -> Path:
    """The lock a queued runner holds while it schedules the queue for everyone."""
    return (root or home()) / "scheduler.lock"


def sweep_lock_path(root: Path | None = None) -> Path:
    """The lock a sweep holds from choosing its names and group until its jobs are saved."""
    return (root or home()) / "sweep.lock"


@contextlib.contextmanager
def held(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (made 0600 if missing) for the block."""
    import fcntl  # lazy: only a sweep takes this lock

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise storage_error(exc, "open the lock") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise storage_error(exc, f"lock {path}") from exc
        yield
    finally:
        os.close(fd)


#: After this long waiting for a lock, say once who holds it, then wait on: a handyjobs
#: suspended with Ctrl-Z or a hung network mount otherwise looks like a hang.
LOCK_NOTICE_S = 2.0


def flock_saying(fd: int, mode: int, what: str = "the state lock") -> None:
    """``flock(fd, mode)``; when another process holds it, one line on stderr after
    :data:`LOCK_NOTICE_S` names it. Errors are flock's own (the caller handles them)."""
    import fcntl  # lazy: only writers lock

    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    import threading  # lazy: only a lock another process holds

    timer = threading.Timer(LOCK_NOTICE_S, _say_waiting, (fd, what))
    timer.daemon = True
    timer.start()
    try:
        fcntl.flock(fd, mode)
    finally:
        timer.cancel()


def _say_waiting(fd: int, what: str) -> None:
    import sys  # lazy: only a wait of over LOCK_NOTICE_S

    pids = lock_holders(fd)
    who = ", ".join(f"pid {pid} ({_comm(pid)})" for pid in pids) or "another process"
    sys.stderr.write(
        f"handyjobs: waiting for {what} held by {who}; a handyjobs stopped with Ctrl-Z holds it "
        "until it goes on (fg)\n"
    )
    sys.stderr.flush()


def lock_holders(fd: int) -> list[int]:
    """The pids holding an flock on ``fd``'s file, from ``/proc/locks`` (empty elsewhere)."""
    st = os.fstat(fd)
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:2f:123 0 EOF"; waiters have "->" after the number.
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == where:
            with contextlib.suppress(ValueError):
                found.append(int(parts[4]))
    return sorted(set(found))


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() or "?"
    except OSError:
        return "gone"


def pending_dir(root: Path | None = None) -> Path:
    """Environments of starts whose record is not saved yet (swept when orphaned)."""
    return (root or home()) / "pending"


def job_dir(name: str, root: Path | None = None) -> Path:
    """The per-job folder: log, run status files, environment."""
    return (root or home()) / "jobs" / name


def removed_dir(root: Path | None = None) -> Path:
    """Where the folders of removed jobs are kept, one folder per name."""
    return (root or home()) / "removed"


def set_aside(name: str, root: Path, created: float | None = None) -> Path | None:
    """Move a job's folder out of the way of the next job of that name: its files belong to
    the job that wrote them. Kept as ``removed/NAME/STAMP``, STAMP the UTC time the job was
    created (``created``, epoch seconds; else the folder's own time); None when there was no
    folder."""
    from datetime import datetime, timezone  # lazy: only rm, clean and such a start need it

    src = job_dir(name, root)
    try:
        st = src.lstat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise storage_error(exc, "read the job's folder") from exc
    if not stat.S_ISDIR(st.st_mode):  # never follow a link out of the state folder
        raise UsageError(f"{src} is not a folder; move it away and try again")
    when = st.st_mtime if created is None else created
    stamp = datetime.fromtimestamp(when, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    parent = ensure_private_dir(removed_dir(root) / name)
    dest, n = parent / stamp, 1
    while dest.exists():
        n += 1
        dest = parent / f"{stamp}-{n}"
    try:
        os.rename(src, dest)
    except OSError as exc:
        raise storage_error(exc, "move the removed job's folder aside") from exc
    return dest


def removed_folders(name: str, root: Path | None = None) -> list[Path]:
    """The kept folders of removed jobs of this name, oldest first (by their stamp)."""
    try:
        return sorted(p for p in (removed_dir(root) / name).iterdir() if p.is_dir())
    except OSError:
        return []


def log_path(name: str, root: Path | None = None) -> Path:
    """The job's log, appended across restarts."""
    return job_dir(name, root) / "output.log"


def rank_log(job_log: str, rank: int) -> str:
    """Rank ``rank``'s own log, beside the job's log (``rank-N.log``)."""
    return str(Path(job_log).parent / f"rank-{rank}.log")


#: The file in a job's folder that holds the caller's environment.
ENV_FILE = "env.json"


def env_path(name: str, root: Path | None = None) -> Path:
    """The caller's environment, kept for restarts (0600)."""
    return job_dir(name, root) / ENV_FILE


def status_path(name: str, run_id: str, root: Path | None = None) -> Path:
    """The status file a run's runner writes: pids, start, outcome."""
    return job_dir(name, root) / f"run-{run_id}.json"


def wake_path(name: str, run_id: str, root: Path | None = None) -> Path:
    """A FIFO a queued run's runner sleeps on; every change of the run writes a byte into it."""
    return job_dir(name, root) / f"run-{run_id}.wake"


def wake(name: str, run_id: str, root: Path) -> None:
    """Wake a queued run's runner: one byte into its FIFO (no reader, ENXIO: no matter).

    The runner sleeps on this FIFO rather than reading the registry, so waiting costs the
    same whatever the queue's length.
    """
    with contextlib.suppress(OSError):
        fd = os.open(wake_path(name, run_id, root), os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, b"!")
        finally:
            os.close(fd)


def reserve_path(name: str, run_id: str, root: Path | None = None) -> Path:
    """Room reserved on the disk for a run's outcome, given back when the outcome is written."""
    return job_dir(name, root) / f"run-{run_id}.reserve"


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` through a temp file and a rename, so readers never see half.

    The temp file is fsynced before the rename: a crash (or SIGKILL) at any point leaves either
    the old file or the new one. A failed write (disk full) removes its temp file and raises
    the OSError; the old file is untouched.
    """
    # os.urandom, as secrets.token_hex reads it, without secrets' import (hmac, random: 15 ms)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(3).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (a short write is retried, an error raised)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def remove_stale_temps(folder: Path) -> None:
    """Remove temp files in ``folder`` left by writers killed mid-write (their pid is gone)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if name.startswith(".") and ".tmp-" in name:
            pid = name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                with contextlib.suppress(OSError):
                    os.unlink(folder / name)


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (zombies included)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but belongs to someone else
        return True
    return True


#: For tests only: the boot id to report instead of the machine's, so that a test can act out
#: a restart of the machine (the runs it started then belong to another boot).
BOOT_ID_ENV = "HANDYJOBS_BOOT_ID"


def boot_id() -> str | None:
    """This boot's id (Linux): pids and start times only mean something within one boot."""
    fake = os.environ.get(BOOT_ID_ENV)
    if fake:
        return fake
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def is_disk_full(exc: OSError) -> bool:
    """True for the errors that more room on the disk would cure."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)
