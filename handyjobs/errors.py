"""The one exception hierarchy of handyjobs; every message says what to do next."""

from __future__ import annotations

import errno
import os

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from handyjobs.core.records import Wait


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_CONTROL.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x1B: "\\x1b"})


def printable(text: str) -> str:
    """``text`` with control characters shown escaped (``\\n``, ``\\x1b``), never acted on.

    An argument with a newline must not break a table line, and one with an escape sequence
    must not recolour or clear the user's terminal.
    """
    return text.translate(_CONTROL)


class HandyjobsError(Exception):
    """Root of every expected handyjobs error; the CLI prints it as one line and exits."""

    #: Exit code the CLI uses for this error (1: an operation failed).
    exit_code: int = 1


class UsageError(HandyjobsError):
    """Bad usage or bad input (a missing script, a malformed ``--gpus``): exit code 2."""

    exit_code = 2


class JobNotFound(HandyjobsError):
    """No job of that name is in the registry."""


class JobStateError(HandyjobsError):
    """The job is in a state that does not allow the operation (stopping a finished job)."""


class GpuError(HandyjobsError):
    """GPUs are busy, held by another job, or cannot be discovered."""


class GpuBusy(GpuError):
    """The GPUs a job asks for are not free and it may not wait; carries why, as data."""

    def __init__(self, wait: Wait, by_count: bool) -> None:
        """Keep the reason as data; :func:`handyjobs.views.render.error_text` words it."""
        self.wait = wait
        #: What the user can do next, for the line the CLI prints.
        self.hint = (
            "add --wait to queue for them"
            if by_count
            else "pick other GPUs, add --wait to queue, or pass --force"
        )
        super().__init__(f"the GPUs asked for are busy; {self.hint} (see `handyjobs gpus`)")


class TmuxError(HandyjobsError):
    """tmux is missing or refused a command."""


class RegistryError(HandyjobsError):
    """The registry file cannot be read (corrupt, or from a newer handyjobs)."""


class StorageError(HandyjobsError):
    """A file or folder of handyjobs could not be read or written (disk full, read-only, ...)."""


class TimeoutExpired(HandyjobsError):
    """``wait --timeout`` ran out; exit code 124 as timeout(1), never a job's own code."""

    exit_code = 124


_NO_LOCKS = (
    "that file system does not lock files (flock): mount it with locks (Lustre: -o flock; "
    "NFS: with its lock service), or point HANDYJOBS_HOME at a folder that has them"
)
# What to do about each kind of storage failure, in the words a user acts on.
_HINTS = {
    errno.ENOSPC: "free some space on that disk, then try again",
    errno.EDQUOT: "free some space in your quota, then try again",
    errno.EROFS: "that file system is read-only; point HANDYJOBS_HOME at a writable folder",
    errno.EACCES: "check the folder's owner and permissions, or point HANDYJOBS_HOME elsewhere",
    errno.EPERM: "check the folder's owner and permissions, or point HANDYJOBS_HOME elsewhere",
    errno.ENOTDIR: "a path component is a file, not a folder; fix HANDYJOBS_HOME",
    errno.ENOENT: "the folder is missing; check HANDYJOBS_HOME",
    errno.ELOOP: "it is a symbolic link loop; fix HANDYJOBS_HOME",
    errno.EIO: "the disk reported an I/O error; check it",
    # flock on a network file system mounted without locks (Lustre without -o flock, NFS
    # without its lock service): every writer of the state folder depends on the lock.
    errno.ENOSYS: _NO_LOCKS,
    errno.ENOLCK: _NO_LOCKS,
    errno.EOPNOTSUPP: _NO_LOCKS,
}


def storage_error(exc: OSError, action: str) -> StorageError:
    """Turn an OSError from the state folder into one line: what failed, why, what to do."""
    why = exc.strerror or os.strerror(exc.errno or 0) or type(exc).__name__
    where = f" {exc.filename}" if exc.filename else ""
    hint = _HINTS.get(exc.errno or 0, "check that path, then try again")
    return StorageError(f"cannot {action}{where}: {why}; {hint}")
