"""Pure: Slurm options checked into a :class:`BatchSpec`, the sbatch script, and the step's argv.

Nothing here runs Slurm. :func:`check` turns what ``handyjobs start --slurm`` was given into a
spec (or one usage error); :func:`script` writes the batch script that runs the runner inside
the allocation; :mod:`handyjobs.backends.slurm.step` builds the command the runner starts there.

Why the batch script gets ``--signal=B:USR1@S``: Slurm then sends the warning only to the
batch shell, which is our runner; the runner passes it to ``srun``, which signals every
process of the step. torchrun would die of a SIGUSR1 (it has no handler), so the node wrapper
starts it with SIGUSR1 ignored; its workers inherit that, and a trainer that wants the
warning installs its own handler (``trainer.should_stop``).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence

from handyjobs.backends.slurm.handle import SlurmHandle
from handyjobs.core.records import BatchSpec, JobSpec, JobState, Run
from handyjobs.errors import UsageError
from handyjobs.structs import field, frozen

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from typing import Any

    from handyjobs.core.spec import StartRequest

#: Signal and lead time of Slurm's warning before the time limit (``--signal=B:USR1@60``).
WARNING_SIGNAL = "USR1"
DEFAULT_SIGNAL_BEFORE_S = 60
#: Slurm keeps the lead time of ``--signal`` in 16 bits.
MAX_SIGNAL_BEFORE_S = 65535
#: The batch environment before the ``--setup`` lines, in the job's folder (``env -0``), and
#: the variable that names it for the runner.
SETUP_ENV_FILE = "setup-env-{run_id}"
SETUP_ENV = "HANDYJOBS_SETUP_BEFORE"

# sbatch's --time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or no limit.
_TIME_RE = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+(:\d{1,2}){0,2})$")
_TIME_WORDS = ("UNLIMITED", "INFINITE", "infinite", "unlimited")
# sbatch's --mem: a number of megabytes, or with a unit.
_MEM_RE = re.compile(r"^\d+[KMGTkmgt]?$")
# Partition, account and constraint values: what Slurm's names and feature expressions use.
_WORD_RE = re.compile(r"^[A-Za-z0-9_.,:@&|!*\[\]()+-]+$")


@frozen
class SlurmRequest:
    """What ``handyjobs start --slurm`` was given, before it is checked."""

    #: ``--slurm`` itself; the other fields may come without it, which is an error.
    submit: bool = True
    nodes: int | None = None
    gpus_per_node: int | None = None
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    mem: str | None = None
    constraint: str | None = None
    extra: Sequence[str] = field(default_factory=tuple)
    requeue: bool = False
    signal_before_s: int | None = None
    cpus_per_gpu: int | None = None
    mem_per_gpu: str | None = None
    setup: Sequence[str] = field(default_factory=tuple)
    srun_opts: Sequence[str] = field(default_factory=tuple)

    @property
    def backend(self) -> str:
        """The backend it sends the job to."""
        return "slurm"

    @property
    def submits(self) -> bool:
        """True with ``--slurm``."""
        return self.submit

    def check(self, req: StartRequest) -> dict[str, Any]:
        """Check the Slurm options, and the request's other options against Slurm; the spec's
        Slurm field (a :class:`~handyjobs.core.spec.BackendRequest`'s part of the spec)."""
        slurm = check(self)
        if req.gpus is not None or req.ngpus is not None or req.wait or req.force:
            raise UsageError(
                "--gpus, --ngpus, --wait and --force pick GPUs on this machine; on Slurm ask "
                "for them with --gpus-per-node"
            )
        if req.nnodes is not None:
            raise UsageError("--nnodes is for machines you start by hand; on Slurm use --nodes")
        if req.cpu and slurm.gpus_per_node:
            raise UsageError("--cpu cannot be combined with --gpus-per-node; pick one")
        if req.priority:
            raise UsageError(
                "--priority orders this machine's queue; Slurm orders its own: ask for a "
                "quality of service with --slurm-arg=--qos=NAME, or lower yours with "
                "--slurm-arg=--nice=N"
            )
        return {"slurm": slurm}


def _printable(text: str) -> str:
    # repr shows control characters escaped; the CLI escapes every error line it prints too.
    return repr(text)


def _word(option: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not _WORD_RE.match(value):
        raise UsageError(
            f"{option} {_printable(value)}: use the name as Slurm shows it (letters, digits "
            "and . , : _ - ; no spaces)"
        )
    return value


def _not_submitted(req: SlurmRequest) -> None:
    """Slurm's options typed without ``--slurm``: one usage error naming the first."""
    options = {
        "--nodes": req.nodes,
        "--gpus-per-node": req.gpus_per_node,
        "--partition": req.partition,
        "--time": req.time,
        "--account": req.account,
        "--mem": req.mem,
        "--constraint": req.constraint,
        "--slurm-arg": req.extra or None,
        "--requeue": req.requeue or None,
        "--signal-before": req.signal_before_s,
        "--cpus-per-gpu": req.cpus_per_gpu,
        "--mem-per-gpu": req.mem_per_gpu,
        "--setup": req.setup or None,
        "--srun-opt": req.srun_opts or None,
    }
    given = next((opt for opt, value in options.items() if value is not None), "that option")
    raise UsageError(f"{given} is for Slurm jobs: add --slurm")


def check(req: SlurmRequest) -> BatchSpec:
    """Check Slurm options; every problem is one usage error saying what to give instead."""
    if not req.submit:
        _not_submitted(req)
    nodes = 1 if req.nodes is None else req.nodes
    if nodes < 1:
        raise UsageError(f"--nodes {nodes}: ask for at least 1 node")
    if req.gpus_per_node is not None and req.gpus_per_node < 1:
        raise UsageError(f"--gpus-per-node {req.gpus_per_node}: ask for at least 1 GPU, or --cpu")
    if req.time is not None and not (req.time in _TIME_WORDS or _TIME_RE.match(req.time)):
        raise UsageError(
            f"--time {_printable(req.time)}: give minutes, HH:MM:SS or D-HH:MM:SS as sbatch "
            "takes them (e.g. 90, 2:00:00, 1-12:00:00)"
        )
    if req.mem is not None and not _MEM_RE.match(req.mem):
        raise UsageError(
            f"--mem {_printable(req.mem)}: give a size per node as sbatch takes it (e.g. 64G, 500M)"
        )
    _check_per_gpu(req)
    before = DEFAULT_SIGNAL_BEFORE_S if req.signal_before_s is None else req.signal_before_s
    if not 0 < before <= MAX_SIGNAL_BEFORE_S:
        raise UsageError(
            f"--signal-before {before}: give seconds between 1 and {MAX_SIGNAL_BEFORE_S}"
        )
    extra = [_one_option("--slurm-arg", "sbatch", "--qos=high", arg) for arg in req.extra]
    if any(arg.partition("=")[0] == "--array" or arg.startswith("-a") for arg in extra):
        # Each run is one job, or one task of a sweep's array: another array would start
        # the same run several times.
        raise UsageError(
            "--slurm-arg=--array: handyjobs makes the job array itself; run the values as "
            "`handyjobs sweep --slurm --grid K=V1,V2`, and limit the tasks at once with --parallel"
        )
    srun_opts = [
        _one_option("--srun-opt", "srun", "--container-image=IMG", arg) for arg in req.srun_opts
    ]
    for line in req.setup:
        if not line.strip() or any(c in line for c in "\n\r\0"):
            raise UsageError(
                f"--setup {_printable(line)}: give one shell line per --setup (repeat it for "
                "more lines), e.g. --setup 'module load cuda/12.4'"
            )
    return BatchSpec(
        nodes=nodes,
        gpus_per_node=req.gpus_per_node,
        partition=_word("--partition", req.partition),
        time=req.time,
        account=_word("--account", req.account),
        mem=req.mem,
        constraint=_word("--constraint", req.constraint),
        extra=tuple(extra),
        requeue=req.requeue,
        signal_before_s=before,
        cpus_per_gpu=req.cpus_per_gpu,
        mem_per_gpu=req.mem_per_gpu,
        setup=tuple(req.setup),
        srun_opts=tuple(srun_opts),
    )


def _one_option(flag: str, command: str, example: str, arg: str) -> str:
    """One option of sbatch's or srun's as typed (``--opt=value``), or one usage error."""
    if not arg.startswith("-") or any(c in arg for c in "\"'\\\n\r\t\0") or arg.strip() != arg:
        raise UsageError(
            f"{flag} {_printable(arg)}: give one {command} option such as {example} "
            "(no quotes or line breaks)"
        )
    return arg


def _check_per_gpu(req: SlurmRequest) -> None:
    """``--cpus-per-gpu`` and ``--mem-per-gpu`` need GPUs, and sbatch takes one memory size."""
    given = "--cpus-per-gpu" if req.cpus_per_gpu is not None else None
    given = "--mem-per-gpu" if req.mem_per_gpu is not None else given
    if given and not req.gpus_per_node:
        raise UsageError(
            f"{given} is for GPU jobs: add --gpus-per-node G (a CPU job gets a CPU per process; "
            "size it with --nproc, its memory with --mem)"
        )
    if req.cpus_per_gpu is not None and req.cpus_per_gpu < 1:
        raise UsageError(f"--cpus-per-gpu {req.cpus_per_gpu}: ask for at least 1 CPU per GPU")
    if req.mem_per_gpu is not None and not _MEM_RE.match(req.mem_per_gpu):
        raise UsageError(
            f"--mem-per-gpu {_printable(req.mem_per_gpu)}: give a size per GPU as sbatch takes "
            "it (e.g. 32G, 500M)"
        )
    if req.mem_per_gpu is not None and req.mem is not None:
        raise UsageError("--mem and --mem-per-gpu cannot be combined (sbatch takes one); pick one")


def cpu_share(text: str, partition: str | None = None) -> int | None:
    """``sinfo -h -o '%c %G %P'`` -> CPUs per GPU on the partition's nodes (the default
    partition's when none is named): the least of its node kinds; None when it has no GPUs."""
    shares = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        name = parts[2]
        if (name.rstrip("*") != partition) if partition else not name.endswith("*"):
            continue
        # "gpu:2", "gpu:a100:8(S:0-1)", several kinds comma separated; "(null)" when none.
        gpus = sum(int(m) for m in re.findall(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)", parts[1]))
        if gpus:
            shares.append(max(1, int(parts[0]) // gpus))
    return min(shares) if shares else None


def _directive(option: str) -> str:
    """One ``#SBATCH`` line; sbatch reads a double-quoted value with spaces as one argument."""
    key, sep, value = option.partition("=")
    if sep and (" " in value or "#" in value):
        return f'#SBATCH {key}="{value}"'
    return f"#SBATCH {option}"


def dependency(after: Mapping[str, Run], after_any: bool) -> str | None:
    """sbatch's ``--dependency`` for ``--after``/``--after-any``; None when nothing is left to wait
    for. A job waits only for Slurm jobs: for anything else it is one usage error."""
    ids = []
    for name, run in after.items():
        job_id = SlurmHandle.of(run).job_id if run.backend == "slurm" else None
        if not job_id:
            raise UsageError(
                f"--after {name}: {name} runs on this machine, and a Slurm job can wait only for "
                f"Slurm jobs; start {name} with --slurm too, or start this job once it ended"
            )
        if run.state.active:
            ids.append(job_id)
        elif run.state is not JobState.SUCCEEDED and not after_any:
            raise UsageError(
                f"--after {name}: {name} already ended {run.state.value}, so this job would "
                "never start; use --after-any to start it anyway"
            )
    if not ids:
        return None
    return ("afterany:" if after_any else "afterok:") + ":".join(ids)


def options(
    spec: JobSpec,
    job_dir: str,
    after: str | None = None,
    share: int | None = None,
    output: str | None = None,
) -> list[str]:
    """The sbatch options of a job, in the order the script lists them (extras last: they win).

    ``after``: the ``--dependency`` value (:func:`dependency`); ``share``: CPUs per GPU of the
    nodes (:func:`cpu_share`), for a GPU job that did not say; ``output``: the batch step's
    output file (default: ``slurm-%j.out`` in the job's folder).
    """
    slurm = spec.slurm
    if slurm is None:
        raise ValueError("not a Slurm job")
    opts = [f"--nodes={slurm.nodes}", "--ntasks-per-node=1"]
    if spec.cpu:
        # One task per node runs torchrun and its workers: it needs a CPU for each of them.
        opts.append(f"--cpus-per-task={spec.procs}")
    if slurm.gpus_per_node:
        opts.append(f"--gpus-per-node={slurm.gpus_per_node}")
        per_gpu = slurm.cpus_per_gpu or share
        if per_gpu:
            # The one task per node runs torchrun and a worker per GPU, each with its data
            # loader's processes: without this Slurm gives it one CPU.
            opts.append(f"--cpus-per-task={per_gpu * slurm.gpus_per_node}")
        if slurm.mem_per_gpu:
            opts.append(f"--mem-per-gpu={slurm.mem_per_gpu}")
    for key in ("partition", "time", "account", "mem", "constraint"):
        value = getattr(slurm, key)
        if value is not None:
            opts.append(f"--{key}={value}")
    opts += [
        # The runner tees the job's output into output.log; this file gets only what the
        # batch step itself prints (the runner's own lines, Slurm's messages).
        f"--output={output or f'{job_dir}/slurm-%j.out'}",
        "--open-mode=append",
        # The caller's environment reaches the job through the job's private env.json, never
        # through Slurm's record of the job.
        "--export=NONE",
        f"--signal=B:{WARNING_SIGNAL}@{slurm.signal_before_s}",
    ]
    if slurm.requeue:
        # Without it the site's policy stands (JobRequeue): a job preempted or on a node that
        # failed comes back where the site requeues, and list says so.
        opts.append("--requeue")
    if after:
        # A dependency that can no longer be met (it failed) cancels this job at once instead
        # of leaving it pending for ever; the run then reads "never started" with the reason.
        opts += [f"--dependency={after}", "--kill-on-invalid-dep=yes"]
    opts += [
        *slurm.extra,
    ]
    return opts


def _runner_lines(spec: JobSpec, run_id: str, runner: Sequence[str], job_dir: str) -> list[str]:
    """The lines that start one run's runner: ``--setup``, the run's marker, the runner exec'd
    last (it gets Slurm's signals)."""
    setup: list[str] = []
    if spec.slurm is not None and spec.slurm.setup:
        # What the lines change in the environment reaches the job: the runner compares its
        # own environment with this one (taken before them) and carries the differences.
        before = shlex.quote(f"{job_dir}/{SETUP_ENV_FILE.format(run_id=run_id)}")
        setup = [
            f"env -0 > {before}",
            "# --setup",
            *spec.slurm.setup,
            f"export {SETUP_ENV}={before}",
        ]
    return [
        *setup,
        f"export HANDYJOBS_RUNNER_OF={run_id}",
        # Slurm signals this script (scancel, the time-limit warning) from its first moment.
        "export HANDYJOBS_SCHEDULED=slurm",
        f"exec {shlex.join(runner)}",
    ]


def _pythonpath(pythonpath: str | None) -> list[str]:
    """--export=NONE keeps the login shell's environment out, but the runner must import the
    same handyjobs that submitted it: a PYTHONPATH the submitter had goes along."""
    return [f"export PYTHONPATH={shlex.quote(pythonpath)}"] if pythonpath else []


def script(
    spec: JobSpec,
    name: str,
    run: int,
    run_id: str,
    runner: Sequence[str],
    job_dir: str,
    pythonpath: str | None = None,
    after: str | None = None,
    share: int | None = None,
) -> str:
    """The batch script: the job's sbatch options, then the runner, exec'd (it gets the signals)."""
    lines = [
        "#!/bin/bash",
        f"# handyjobs job {name}, run {run} (run id {run_id}), submitted with sbatch.",
        "# The runner starts one torchrun per node through srun, copies every byte of output",
        "# to output.log and records the outcome in this folder, which every node must share.",
        f"#SBATCH --job-name={name}",
        *(_directive(opt) for opt in options(spec, job_dir, after, share)),
        *_pythonpath(pythonpath),
        *_runner_lines(spec, run_id, runner, job_dir),
    ]
    return "\n".join(lines) + "\n"


@frozen
class ArrayPoint:
    """One run of a job array (a sweep's point): array task I runs the I-th point."""

    name: str
    run: int
    run_id: str
    runner: Sequence[str]
    job_dir: str


def array_range(size: int, throttle: int | None) -> str:
    """sbatch's ``--array`` for ``size`` tasks, at most ``throttle`` running at once."""
    return f"0-{size - 1}" + (f"%{throttle}" if throttle else "")


def array_script(
    spec: JobSpec,
    title: str,
    points: Sequence[ArrayPoint],
    throttle: int | None = None,
    pythonpath: str | None = None,
    after: str | None = None,
    share: int | None = None,
) -> str:
    """One batch script for many runs of one spec's options (a sweep): a Slurm job array whose
    task I execs the I-th point's runner, as :func:`script` does for one job."""
    if not points:
        raise ValueError("a job array needs at least one run")
    # One output file would be every task's, in one job's folder (which `rm` may take while
    # tasks still wait to start: Slurm then cannot start them). Each branch sends the batch
    # step's output to its own job's folder instead; Slurm's own lines go nowhere.
    opts = options(spec, points[0].job_dir, after, share, output="/dev/null")
    lines = [
        "#!/bin/bash",
        f"# handyjobs sweep {title}: {len(points)} jobs as one Slurm job array, submitted with",
        "# sbatch. Array task I runs branch I: that job's runner, which starts one torchrun per",
        "# node through srun, copies every byte of output to the job's output.log and records",
        "# its outcome in the job's folder, which every node must share.",
        f"#SBATCH --job-name={title}",
        f"#SBATCH --array={array_range(len(points), throttle)}",
        *(_directive(opt) for opt in opts),
        *_pythonpath(pythonpath),
        'case "$SLURM_ARRAY_TASK_ID" in',
    ]
    for index, point in enumerate(points):
        out = shlex.quote(f"{point.job_dir}/slurm-")
        runner = _runner_lines(spec, point.run_id, point.runner, point.job_dir)
        lines += [
            f"{index})  # job {point.name}, run {point.run} (run id {point.run_id})",
            f'    exec >>{out}"${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}.out" 2>&1',
            *(f"    {line}" for line in runner),
            "    ;;",
        ]
    lines += [
        "esac",
        'echo "handyjobs: array task $SLURM_ARRAY_TASK_ID has no job in this script" >&2',
        "exit 1",
    ]
    return "\n".join(lines) + "\n"
