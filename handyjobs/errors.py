"""The one exception hierarchy of handyjobs; every message says what to do next."""

from __future__ import annotations


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


class TmuxError(HandyjobsError):
    """tmux is missing or refused a command."""


class RegistryError(HandyjobsError):
    """The registry file cannot be read or written."""
