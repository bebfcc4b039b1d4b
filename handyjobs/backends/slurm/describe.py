"""How a Slurm run describes itself in ``list``, ``show`` and ``start``: Slurm's words, kept here.

The views ask the run's backend for these pieces (:class:`handyjobs.backends.base.Describe`);
Slurm's job numbers, state names and pending reasons never leave this folder as code.
"""

from __future__ import annotations

import shlex
import time

from handyjobs.backends.slurm.handle import SlurmHandle
from handyjobs.core.records import JobRecord, JobSpec, JobState

#: The scheduler's name as people write it.
TITLE = "Slurm"

#: End states that say no more than our own state does.
PLAIN_ENDS = ("COMPLETED", "FAILED", "RUNNING", "COMPLETING", "PENDING")

# Slurm's commonest pending reasons (squeue's REASON column), in words.
_REASONS = {
    "None": "Slurm has not looked at it yet",
    "Resources": "waiting for free nodes, CPUs or GPUs",
    "Priority": "jobs of higher priority are ahead of it",
    "Dependency": "waiting for a job it depends on",
    "DependencyNeverSatisfied": "a job it depends on failed; it will never start",
    "JobHeldUser": "held by its user; `scontrol release` with its job id lets it go",
    "JobHeldAdmin": "held by an administrator",
    # A sweep's job array runs at most --parallel K of its tasks at once (sbatch --array=...%K).
    "JobArrayTaskLimit": "as many of its sweep's jobs as --parallel allows are running",
    "BeginTime": "its start time has not come (a requeued job waits a little)",
    "ReqNodeNotAvail": "a node it needs is not available",
    "PartitionTimeLimit": "its --time is over the partition's limit",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows",
    "PartitionDown": "its partition is down",
    "NodeDown": "a node it needs is down",
    "Reservation": "waiting for its reservation",
    "InvalidAccount": "its account is not valid here",
    "InvalidQOS": "its QOS is not valid here",
    "CONFIGURING": "its nodes are being set up",
    "REQUEUED": "it was requeued and will start again",
    # What the lifecycle itself writes when the job side had the run requeued.
    "requeued": "it was requeued and will start again",
}
# Reasons that all mean a limit of the user's account or QOS.
_LIMIT_PREFIXES = ("Assoc", "QOS", "MaxCpu", "MaxGRES", "MaxNode")
# The options shown back in `show`, in this order.
_SHOWN_OPTS = (
    "partition",
    "time",
    "account",
    "mem",
    "constraint",
    "cpus_per_gpu",
    "mem_per_gpu",
)


class Describe:
    """Slurm's part of the views."""

    title = TITLE
    plain_ends = PLAIN_ENDS

    def gpus(self, record: JobRecord) -> str | None:
        """The GPUS column: GPUs per node, ``cpu``, or ``-``."""
        slurm = record.spec.slurm
        if slurm is None:
            return None
        if slurm.gpus_per_node:
            return f"{slurm.gpus_per_node}/node"
        return "cpu" if record.spec.cpu else "-"

    def nnodes(self, spec: JobSpec) -> int | None:
        """How many nodes the job asked Slurm for."""
        return spec.slurm.nodes if spec.slurm is not None else None

    def reason_words(self, key: str) -> str | None:
        """A pending reason in words, when it is a well-known one."""
        words = _REASONS.get(key)
        if words is None and key.startswith(_LIMIT_PREFIXES):
            words = "a limit of its account or QOS"
        return words

    def show_fields(self, record: JobRecord) -> list[tuple[str, str]]:
        """``show``'s lines about the Slurm job: its number, state, nodes, script, options."""
        run = record.current
        view = run.cluster
        state = "-"
        if view is not None:
            state = view.state + (f" ({view.reason})" if view.reason else "")
            if not run.state.active and view.verdict in (JobState.QUEUED, JobState.RUNNING):
                # Its last word while the job ran; the job side recorded how it ended.
                state = f"{view.state} when last asked; the job recorded its own end"
            if view.restarts:
                state += f"; requeued {view.restarts}x"
        fields = [
            ("slurm job", SlurmHandle.of(run).job_id or "-"),
            ("slurm state", state),
            ("slurm nodes", (view.nodes if view else None) or "-"),
            ("sbatch script", SlurmHandle.of(run).script or "-"),
        ]
        slurm = record.spec.slurm
        if slurm is not None:
            asked = [
                f"--{k.replace('_', '-')}={getattr(slurm, k)}"
                for k in _SHOWN_OPTS
                if getattr(slurm, k)
            ]
            asked += [f"--setup={shlex.quote(line)}" for line in slurm.setup]
            asked += [f"--srun-opt={opt}" for opt in slurm.srun_opts]
            fields.append(("slurm options", " ".join([*asked, *slurm.extra]) or "-"))
        return fields

    def place(self, record: JobRecord) -> str:
        """``Slurm job 42`` (``Slurm job -`` before it was submitted)."""
        return f"Slurm job {SlurmHandle.of(record.current).job_id or '-'}"

    def submitted(self, record: JobRecord, state: str) -> list[str]:
        """What ``start`` prints: the Slurm job, its size, where its script and log are."""
        run, slurm = record.current, record.spec.slurm
        assert slurm is not None
        nodes = f"{slurm.nodes} node{'s' if slurm.nodes > 1 else ''}"
        per = f"{run.nproc} process{'es' if run.nproc > 1 else ''}"
        gpus = (
            f", {slurm.gpus_per_node} GPUs"
            if slurm.gpus_per_node
            else (", CPU" if record.spec.cpu else "")
        )
        return [
            f"submitted {record.name} to Slurm as job {SlurmHandle.of(run).job_id}: {nodes}, "
            f"{per}{gpus} per node ({state})",
            f"  script: {SlurmHandle.of(run).script}",
            f"  log:    {record.log_path}",
            f"  follow: handyjobs logs {record.name} -f    state: handyjobs show {record.name}",
        ]

    def cancelled(self, record: JobRecord) -> str | None:
        """``Slurm job N cancelled``, once it was submitted."""
        job_id = SlurmHandle.of(record.current).job_id
        return f"Slurm job {job_id} cancelled" if job_id else None

    def paused(self, record: JobRecord, paused: bool) -> str | None:
        """``Slurm job N suspended`` (``resumed``)."""
        job_id = SlurmHandle.of(record.current).job_id
        return f"Slurm job {job_id} {'suspended' if paused else 'resumed'}"

    def signalled(self, record: JobRecord, sig: str) -> str | None:
        """``Slurm sent it to every process of job N's steps``."""
        job_id = SlurmHandle.of(record.current).job_id
        return f"Slurm sent it to every process of job {job_id}'s steps"

    def silence(self) -> str | None:
        """``Slurm cluster C has not answered since ...`` when squeue went unanswered."""
        from handyjobs.backends.slurm import answers  # lazy: only after Slurm was asked

        quiet = answers.heard()
        if quiet is None:
            return None
        who = f"Slurm cluster {quiet.cluster}" if quiet.cluster else "Slurm"
        if quiet.since is None:
            when = f"did not answer ({quiet.why}): the states shown are the last recorded"
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(quiet.since))
            ago = _ago(quiet.asked - quiet.since)
            when = (
                f"has not answered since {stamp} ({ago} ago; {quiet.why}): the states "
                "shown are from then"
            )
        return f"{who} {when}; `sinfo` shows whether its controller is up"


def _ago(seconds: float) -> str:
    """``40s``, ``12 min``, ``3 h``, ``2 days``."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h"
    return f"{s // 86400} days"


#: What each control of Slurm's does, in words.
CONTROL_WORDS = {
    "uhold": "hold",
    "release": "release",
    "suspend": "suspend",
    "resume": "resume",
    "signal": "signal",
}


def refusal(verb: str, job_id: str, name: str, said: str, code: int = 1) -> str:
    """The one line for a control Slurm refused: what it said, and what to do next."""
    action = CONTROL_WORDS[verb]
    lines = [line.strip() for line in said.strip().splitlines() if line.strip()]
    why = (lines[0] if lines else f"exit code {code}").removesuffix(f" for job {job_id}")
    if code == -1:
        return f"Slurm could not be asked to {action} job {job_id} ({why}); try again later"
    head = f"Slurm refused to {action} job {job_id} ({why})"
    if "permission denied" not in why.lower() or verb == "signal":
        return f"{head}; see its state with `handyjobs show {name}`, then try again"
    if verb in ("suspend", "resume"):
        return (
            f"{head}: on most clusters only Slurm's operators may suspend and resume jobs; ask "
            f"one to `scontrol {verb} {job_id}`, or end it with `handyjobs stop {name}`"
        )
    return (
        f"{head}: an administrator's hold is theirs to change; ask one to `scontrol {verb} "
        f"{job_id}`, or end the job with `handyjobs stop {name}`"
    )


DESCRIBE = Describe()
