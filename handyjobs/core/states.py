"""The states and kinds a record names, as enums: light to import, so that the CLI's help and
its argument checks need not load the records themselves."""

from __future__ import annotations

import enum


class JobState(str, enum.Enum):
    """Where a run is in its life; the last four are end states."""

    QUEUED = "queued"
    RUNNING = "running"
    #: Its processes are stopped (SIGSTOP) by ``pause`` until ``resume``; its GPUs stay booked.
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    LOST = "lost"

    @property
    def active(self) -> bool:
        """True while the run waits for GPUs, runs or is paused."""
        return self in (JobState.QUEUED, JobState.RUNNING, JobState.PAUSED)


class LostKind(str, enum.Enum):
    """Why a run ended with no outcome of its own, failed before its command started, or was
    ended by a limit."""

    #: The runner process is gone and wrote no outcome (SIGKILL, OOM killer).
    RUNNER_DIED = "runner_died"
    #: The runner's terminal went away (tmux session or server killed); it ended the job.
    SESSION_GONE = "session_gone"
    #: The machine rebooted since the run started.
    REBOOT = "reboot"
    #: The runner stopped on an unexpected error of its own.
    RUNNER_ERROR = "runner_error"
    #: The run could not be started (its session, its environment file, the command).
    START_FAILED = "start_failed"
    #: A cluster scheduler ended it and the job side recorded nothing (node failure, or the
    #: scheduler no longer knows the job); ``detail`` holds the scheduler's state.
    CLUSTER_ENDED = "cluster_ended"
    #: The cluster's scheduler ran it (and ended it) but its runner never reported from the
    #: node: the node could not reach the job's folder, or the runner failed at once;
    #: ``detail`` holds the scheduler's state.
    NO_JOB_SIDE = "no_job_side"
    #: A job it was to start after (``--after``) failed, was stopped, lost or removed.
    DEPENDENCY_FAILED = "dependency_failed"
    #: Its runner ended it at its time limit (``--time``); ``detail`` holds the limit.
    TIME_LIMIT = "time_limit"
    #: The kernel killed its processes for going over its memory limit (``--mem``).
    OUT_OF_MEMORY = "out_of_memory"


class BlockKind(str, enum.Enum):
    """What keeps one GPU from a queued run."""

    HELD = "held"  # a running job of ours holds it (job)
    WANTED = "wanted"  # a job queued earlier keeps it (job)
    PROCESSES = "processes"  # compute processes run on it (processes)
    MEMORY = "memory"  # memory in use above the threshold (used_mib, threshold_mib)
    MIG = "mig"  # MIG mode is on: a plain index cannot address an instance
    UNREADABLE = "unreadable"  # discovery could not read it (detail)
    MISSING = "missing"  # it is not there (any more)


#: Backends whose runs wait in this machine's queue (a cluster's scheduler queues its own).
OWN_QUEUE = frozenset({"tmux"})
