"""Slurm's words for a job as data: its state (squeue, scontrol, sacct) and what it means.

Slurm's words are kept as they are (``show`` prints them); :func:`verdict` says what each
means for the run. An array task is named as Slurm names it, ``ARRAYID_INDEX`` (``123_4``),
whichever command answers.
"""

from __future__ import annotations

import re

from handyjobs.core.records import ClusterState, JobState

#: The scheduler's name on every view.
SCHEDULER = "slurm"

_QUEUED = {
    "PENDING",
    "CONFIGURING",  # nodes allocated, still booting: the runner has not started
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESV_DEL_HOLD",
}
# Suspended (``scontrol suspend``): every process of the job stopped, its nodes kept.
_PAUSED = {"SUSPENDED"}
# Pending reasons that say the job is held: it never starts until ``scontrol release``.
_HELD = ("JobHeldUser", "JobHeldAdmin")
_ENDED = {
    "COMPLETED": JobState.SUCCEEDED,
    "CANCELLED": JobState.STOPPED,
    "FAILED": JobState.FAILED,
    "TIMEOUT": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED,
    "DEADLINE": JobState.FAILED,
    "PREEMPTED": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "REVOKED": JobState.FAILED,
    "NODE_FAIL": JobState.LOST,
}


def verdict(state: str) -> JobState:
    """What a Slurm state means for the run: QUEUED, RUNNING, or how it ended.

    A state word this handyjobs does not know counts as running: a run is never ended on a
    word it cannot read (``show`` still prints it).
    """
    word = state.split()[0].rstrip("+") if state.split() else ""
    if word in _QUEUED:
        return JobState.QUEUED
    if word in _PAUSED:
        return JobState.PAUSED
    return _ENDED.get(word, JobState.RUNNING)


def _exit(text: str | None) -> tuple[int | None, int | None]:
    """Slurm's ``ExitCode=N:S`` -> (exit code, signal); a signal means no exit code."""
    if not text or ":" not in text:
        return None, None
    code, _, sig = text.partition(":")
    if not (code.isdigit() and sig.isdigit()):
        return None, None
    if int(sig):
        return None, int(sig)
    return int(code), None


def state_of(
    job_id: str,
    state: str,
    reason: str | None = None,
    nodes: str | None = None,
    restarts: int = 0,
    exit_code: str | None = None,
) -> ClusterState:
    """One job as data, Slurm's words kept and their meaning added."""
    word = state.split()[0] if state.split() else "UNKNOWN"  # sacct: "CANCELLED by 1000"
    code, sig = _exit(exit_code)
    meaning = verdict(word)
    return ClusterState(
        scheduler=SCHEDULER,
        job_id=job_id,
        state=word,
        verdict=meaning,
        reason=None if reason in (None, "", "None", "(null)") else reason,
        nodes=nodes or None,
        exit_code=code,
        signal=sig,
        restarts=restarts,
        # --kill-on-invalid-dep: Slurm cancels a job whose dependency did not succeed and
        # leaves a reason that starts with "Dependency" (DependencyNeverSatisfied).
        dependency_failed=not meaning.active and (reason or "").startswith("Dependency"),
        held=meaning is JobState.QUEUED and reason in _HELD,
    )


def parse_squeue(text: str) -> dict[str, ClusterState]:
    """``squeue -O JobArrayID:|,State:|,Reason:|,NodeList:|,RestartCnt:|`` lines -> job id
    (an array task's ``123_4``) -> state. A line for several pending tasks (``123_[2-3%2]``,
    as squeue prints them without ``-r``) gives each of them."""
    jobs = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 5 or not parts[0].strip():
            continue
        listed, state, reason, nodes, restarts = (p.strip() for p in parts[:5])
        for job_id in task_ids(listed):
            jobs[job_id] = state_of(
                job_id, state, reason, nodes, int(restarts) if restarts.isdigit() else 0
            )
    return jobs


_TASKS = re.compile(r"^(\d+)_\[([\d,-]+)(?:%\d+)?\]$")


def task_ids(listed: str) -> list[str]:
    """The job ids one squeue line stands for: ``123_[2-3%2]`` -> ``123_2``, ``123_3``."""
    m = _TASKS.match(listed)
    if m is None:
        return [listed]
    out = []
    for part in m.group(2).split(","):
        low, _, high = part.partition("-")
        if low.isdigit() and (high or low).isdigit():
            out += [f"{m.group(1)}_{i}" for i in range(int(low), int(high or low) + 1)]
    return out


_FIELD = re.compile(r"(?:^|\s)([A-Za-z][\w/:]*)=(.*?)(?=\s[A-Za-z][\w/:]*=|$)")


def parse_scontrol(text: str) -> ClusterState | None:
    """``scontrol show job -o ID`` -> the job's state, exit code, reason and nodes."""
    fields = dict(_FIELD.findall(text.strip()))
    if "JobId" not in fields or "JobState" not in fields:
        return None
    restarts = fields.get("Restarts", "0")
    task = fields.get("ArrayTaskId", "")
    return state_of(
        # An array task by the name its handle keeps (JobId is the task's own number).
        f"{fields['ArrayJobId']}_{task}"
        if task.isdigit() and "ArrayJobId" in fields
        else fields["JobId"],
        fields["JobState"],
        fields.get("Reason"),
        fields.get("NodeList"),
        int(restarts) if restarts.isdigit() else 0,
        fields.get("ExitCode"),
    )


def parse_sacct(text: str, job_id: str) -> ClusterState | None:
    """``sacct -X -n -P -o JobID,State,ExitCode,NodeList,Reason`` -> the job's line, if any."""
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) >= 5 and parts[0] == job_id:
            return state_of(job_id, parts[1], parts[4], parts[3], 0, parts[2])
    return None
