"""``handyjobs start``: check, register and launch a job; print where it runs (or why it waits)."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Annotated, Any

import typer

from handyjobs.backends.slurm.sbatch import SlurmRequest
from handyjobs.core import jobs
from handyjobs.core.records import JobRecord, JobSpec, JobState, SlurmSpec, returncode
from handyjobs.core.spec import StartRequest
from handyjobs.errors import UsageError

# The options `start` and `sweep` share, declared once.
Gpus = Annotated[str | None, typer.Option(help="GPUs by nvidia-smi index or UUID: 2,4")]
Ngpus = Annotated[int | None, typer.Option(help="Any N free GPUs.")]
Cpu = Annotated[bool, typer.Option("--cpu", help="Run on the CPU (gloo for DDP).")]
Nproc = Annotated[int | None, typer.Option(help="Processes (default: one per GPU).")]
Env = Annotated[list[str] | None, typer.Option(help="Extra KEY=VALUE for the job.")]
Cwd = Annotated[str | None, typer.Option(help="Working directory of the job.")]
Module = Annotated[bool, typer.Option("-m", "--module", help="SCRIPT is a module.")]
Exec = Annotated[
    bool, typer.Option("-x", "--exec", help="SCRIPT is a command, run as it is (no python).")
]
Python = Annotated[str | None, typer.Option(help="Python to run the job with.")]
Wait = Annotated[bool, typer.Option("--wait", help="Queue until the GPUs are free.")]
Force = Annotated[bool, typer.Option("--force", help="Use GPUs even if busy.")]
Group = Annotated[str | None, typer.Option(help="Put the job in a group (list/stop/wait it).")]
After = Annotated[
    list[str] | None, typer.Option(help="Start after these jobs succeed: NAME[,NAME...]")
]
AfterAny = Annotated[
    list[str] | None, typer.Option(help="Start after these jobs end, whatever their outcome.")
]
Priority = Annotated[int, typer.Option(help="Higher goes first in the queue.")]
OnExit = Annotated[
    str | None, typer.Option(help="Command to run when the job ends (no shell; see README).")
]
MaxRestarts = Annotated[int | None, typer.Option(help="torchrun's elastic restarts.")]
# Slurm's options, named as sbatch names them.
Slurm = Annotated[bool, typer.Option("--slurm", help="Submit to Slurm (sbatch).")]
Nodes = Annotated[int | None, typer.Option(help="Slurm: nodes.")]
GpusPerNode = Annotated[int | None, typer.Option(help="Slurm: GPUs per node.")]
Partition = Annotated[str | None, typer.Option(help="Slurm: partition.")]
Time = Annotated[str | None, typer.Option(help="Slurm: time limit (minutes or HH:MM:SS).")]
Account = Annotated[str | None, typer.Option(help="Slurm: account.")]
Mem = Annotated[str | None, typer.Option(help="Slurm: memory per node (64G).")]
Constraint = Annotated[str | None, typer.Option(help="Slurm: node features.")]
SlurmArg = Annotated[
    list[str] | None, typer.Option(help="Slurm: any sbatch option, --slurm-arg=--qos=high.")
]
Requeue = Annotated[
    bool, typer.Option("--requeue", help="Slurm: requeue after the time-limit warning.")
]
SignalBefore = Annotated[
    int | None, typer.Option(help="Slurm: SIGUSR1 this many s before the limit (60).")
]


def request(
    script: str,
    args: list[str] | None,
    *,
    name: str | None = None,
    gpus: str | None = None,
    ngpus: int | None = None,
    cpu: bool = False,
    nproc: int | None = None,
    env: list[str] | None = None,
    cwd: str | None = None,
    module: bool = False,
    executable: bool = False,
    python: str | None = None,
    wait: bool = False,
    force: bool = False,
    group: str | None = None,
    after: list[str] | None = None,
    after_any: list[str] | None = None,
    priority: int = 0,
    on_exit: str | None = None,
    max_restarts: int | None = None,
    params: list[tuple[str, str]] | None = None,
    nnodes: int | None = None,
    node_rank: int | None = None,
    rdzv_endpoint: str | None = None,
    rdzv_id: str | None = None,
    slurm: SlurmRequest | None = None,
) -> StartRequest:
    """A start request from the command line's options."""
    if after and after_any:
        raise UsageError("--after and --after-any both given: pick one way to wait for jobs")
    return StartRequest(
        script=script,
        args=list(args or []),
        module=module,
        name=name,
        gpus=gpus,
        ngpus=ngpus,
        cpu=cpu,
        nproc=nproc,
        env=env or [],
        cwd=cwd,
        python=python,
        wait=wait,
        force=force,
        executable=executable,
        group=group,
        after=list(after or after_any or []),
        after_any=bool(after_any),
        priority=priority,
        on_exit=on_exit,
        max_restarts=max_restarts,
        params=list(params or []),
        nnodes=nnodes,
        node_rank=node_rank,
        rdzv_endpoint=rdzv_endpoint,
        rdzv_id=rdzv_id,
        slurm=slurm if slurm is not None and slurm != SlurmRequest(submit=False) else None,
    )


def _like(
    ctx: typer.Context, like: str, given: dict[str, Any], slurm: SlurmRequest
) -> StartRequest:
    """A request from another job's spec, changed by the options typed on this command line."""
    spec = jobs.get_job(like).spec
    base = _from_spec(spec)
    base = replace(base, slurm=_like_slurm(ctx, base.slurm, slurm))
    if base.on_slurm and spec.slurm is None and base.slurm is not None:
        # A job of this machine sent to Slurm: its GPU picks and queue place were this
        # machine's. It asks Slurm for as many GPUs per node, unless told otherwise now.
        count = len(spec.gpus) if spec.gpus else (spec.ngpus or None)
        if count and not (_typed(ctx, "gpus_per_node") or _typed(ctx, "cpu")):
            base = replace(base, slurm=replace(base.slurm, gpus_per_node=count))
        base = replace(base, gpus=None, ngpus=None, wait=False, force=False, priority=0)
    changes = {key: value for key, value in given.items() if key == "args" or _typed(ctx, key)}
    if changes.get("args") is None:
        changes.pop("args", None)  # no new arguments: the other job's
    if changes.get("env"):
        changes["env"] = [*base.env, *changes["env"]]  # added to the other job's
    return replace(base, **{_FIELD.get(k, k): v for k, v in changes.items()})


_FIELD = {"exec_": "executable"}

# Slurm options on the command line and the SlurmRequest fields they fill.
_SLURM_FIELD = {
    "slurm": "submit",
    "nodes": "nodes",
    "gpus_per_node": "gpus_per_node",
    "partition": "partition",
    "time": "time",
    "account": "account",
    "mem": "mem",
    "constraint": "constraint",
    "slurm_arg": "extra",
    "requeue": "requeue",
    "signal_before": "signal_before_s",
}


def _like_slurm(
    ctx: typer.Context, base: SlurmRequest | None, typed: SlurmRequest
) -> SlurmRequest | None:
    """A --like start's Slurm request: the other job's, changed by the Slurm options typed."""
    # A Slurm job's --like goes to Slurm again; a local job's goes there when --slurm is typed.
    merged = base or SlurmRequest(submit=False)
    for option, key in _SLURM_FIELD.items():
        if _typed(ctx, option) and not (key == "submit" and merged.submit):
            merged = replace(merged, **{key: getattr(typed, key)})
    return None if merged == SlurmRequest(submit=False) else merged


def _typed(ctx: typer.Context, key: str) -> bool:
    """True when the option was given on the command line (not left at its default)."""
    source = ctx.get_parameter_source(key)
    return source is not None and source.name != "DEFAULT"


def _from_spec(spec: JobSpec) -> StartRequest:
    """The request that would make this spec again (GPUs by index, the same settings)."""
    return StartRequest(
        script=spec.script,
        args=list(spec.args),
        module=spec.module,
        gpus=None if spec.gpus is None else ",".join(map(str, spec.gpus)),
        ngpus=spec.ngpus,
        cpu=spec.cpu,
        nproc=spec.nproc,
        env=[f"{k}={v}" for k, v in spec.env],
        cwd=spec.cwd,
        python=spec.python,
        wait=spec.wait,
        force=spec.force,
        executable=spec.executable,
        group=spec.group,
        after=list(spec.after),
        after_any=spec.after_any,
        priority=spec.priority,
        on_exit=shlex.join(spec.on_exit) if spec.on_exit else None,
        max_restarts=spec.max_restarts,
        slurm=None if spec.slurm is None else _slurm_request(spec.slurm),
    )


def _slurm_request(slurm: SlurmSpec) -> SlurmRequest:
    """The Slurm options that would make this Slurm spec again (the fields share names)."""
    return SlurmRequest(True, **{f.name: getattr(slurm, f.name) for f in fields(slurm)})


def slurm_request(params: Mapping[str, Any]) -> SlurmRequest:
    """The Slurm options of a command line (``ctx.params`` of ``start`` or ``sweep``)."""
    given = {key: params[option] for option, key in _SLURM_FIELD.items()}
    return SlurmRequest(**{**given, "extra": tuple(given["extra"] or ())})


def start(
    ctx: typer.Context,
    script: Annotated[
        str | None,
        typer.Argument(help="Script to run (a module with -m, a command with --exec)."),
    ] = None,
    args: Annotated[list[str] | None, typer.Argument(help="Arguments for the script.")] = None,
    gpus: Gpus = None,
    ngpus: Ngpus = None,
    cpu: Cpu = False,
    nproc: Nproc = None,
    name: Annotated[str | None, typer.Option(help="Job and tmux session name.")] = None,
    env: Env = None,
    cwd: Cwd = None,
    module: Module = False,
    exec_: Exec = False,
    python: Python = None,
    wait: Wait = False,
    force: Force = False,
    group: Group = None,
    after: After = None,
    after_any: AfterAny = None,
    priority: Priority = 0,
    on_exit: OnExit = None,
    max_restarts: MaxRestarts = None,
    like: Annotated[
        str | None, typer.Option(help="Start from another job's spec, with these changes.")
    ] = None,
    nnodes: Annotated[
        int | None, typer.Option(help="Machines the job spans (start it on each one).")
    ] = None,
    node_rank: Annotated[
        int | None, typer.Option(help="This machine's place: 0 hosts the rendezvous.")
    ] = None,
    rdzv_endpoint: Annotated[
        str | None, typer.Option(help="HOST:PORT on node 0 where the nodes meet.")
    ] = None,
    rdzv_id: Annotated[
        str | None, typer.Option(help="The id node 0's start printed (other nodes).")
    ] = None,
    attach: Annotated[bool, typer.Option("--attach", help="Attach to it at once.")] = False,
    follow: Annotated[bool, typer.Option("--follow", help="Follow its log to the end.")] = False,
    slurm: Slurm = False,
    nodes: Nodes = None,
    gpus_per_node: GpusPerNode = None,
    partition: Partition = None,
    time: Time = None,
    account: Account = None,
    mem: Mem = None,
    constraint: Constraint = None,
    slurm_arg: SlurmArg = None,
    requeue: Requeue = False,
    signal_before: SignalBefore = None,
) -> None:
    """Start SCRIPT as a job in its own tmux session (torchrun when several processes)."""
    slurm_req = slurm_request(ctx.params)
    if slurm and attach:
        raise UsageError("a Slurm job has no terminal to attach to: use --follow")
    if like is not None:
        # With --like, what is typed where SCRIPT goes are the new arguments.
        new_args = None if script is None else [script, *(args or [])]
        given = {
            "args": new_args,
            "gpus": gpus,
            "ngpus": ngpus,
            "cpu": cpu,
            "nproc": nproc,
            "name": name,
            "env": env,
            "cwd": cwd,
            "module": module,
            "exec_": exec_,
            "python": python,
            "wait": wait,
            "force": force,
            "group": group,
            "priority": priority,
            "on_exit": on_exit,
            "max_restarts": max_restarts,
        }
        if nnodes is not None:
            raise UsageError("--like starts a job on this machine; give --nnodes without --like")
        req = replace(_like(ctx, like, given, slurm_req), caller_env=dict(os.environ))
    else:
        if script is None:
            raise UsageError("give the SCRIPT to run (or --like NAME to start from another job)")
        req = request(
            script,
            args,
            name=name,
            gpus=gpus,
            ngpus=ngpus,
            cpu=cpu,
            nproc=nproc,
            env=env,
            cwd=cwd,
            module=module,
            executable=exec_,
            python=python,
            wait=wait,
            force=force,
            group=group,
            after=after,
            after_any=after_any,
            priority=priority,
            on_exit=on_exit,
            max_restarts=max_restarts,
            nnodes=nnodes,
            node_rank=node_rank,
            rdzv_endpoint=rdzv_endpoint,
            rdzv_id=rdzv_id,
            slurm=slurm_req,
        )
    record = jobs.start_job(req)
    announce(record, req)
    sys.stdout.flush()
    if attach:
        from handyjobs.cli.attach import exec_attach

        exec_attach(record.name)
    if follow:
        from handyjobs.views.logview import follow_to_end

        follow_to_end(record.name)
        raise typer.Exit(returncode(jobs.get_job(record.name).current))


def announce(record: JobRecord, req: StartRequest, brief: bool = False) -> None:
    """Say where the job runs, or why it waits; with ``brief``, one line."""
    from handyjobs.views import render

    run = record.current
    if record.spec.slurm is not None:
        print("\n".join(render.submitted_lines(record)))
        return
    if run.state is JobState.QUEUED:
        why = render.wait_text(run.wait) if run.wait else "waiting"
        print(f"queued {record.name} (tmux session {record.session}): {why}")
    else:
        where = (
            f"GPUs {','.join(map(str, run.gpus))}"
            if run.gpus
            else "CPU"
            if record.spec.cpu
            else "the caller's devices"
        )
        procs = f"{run.nproc} process{'es' if run.nproc > 1 else ''}"
        print(f"started {record.name} in tmux session {record.session} on {where}, {procs}")
        if not record.spec.cpu and not record.spec.books_gpus and _has_nvidia_gpu():
            visible = req.caller_env.get("CUDA_VISIBLE_DEVICES")
            if visible is None:
                sees = "every GPU, cuda:0 being GPU 0"
            elif not visible.strip():
                sees = "no GPU (CUDA_VISIBLE_DEVICES is empty)"
            else:
                sees = f"CUDA_VISIBLE_DEVICES={visible}"
            print(f"  note:   no GPU was booked; the job sees {sees}; book with --gpus or --ngpus")
    rdzv = record.spec.rdzv
    if rdzv is not None:
        print(
            f"  nodes:  node {rdzv.node_rank} of {rdzv.nnodes}, rendezvous {rdzv.endpoint} "
            f"id {rdzv.rdzv_id}"
        )
        if rdzv.node_rank == 0:
            others = f"N = 1 to {rdzv.nnodes - 1}" if rdzv.nnodes > 2 else "N = 1"
            print(f"  others: on the other node{'s' if rdzv.nnodes > 2 else ''} ({others}):")
            print(f"          {_other_node(record)}")
    if brief:
        return
    print(f"  log:    {record.log_path}")
    print(f"  attach: handyjobs attach {record.name}    follow: handyjobs logs {record.name} -f")


def _other_node(record: JobRecord) -> str:
    """The command that starts another node of this job: same script, arguments, processes."""
    spec, rdzv = record.spec, record.spec.rdzv
    assert rdzv is not None
    opts = ["--nnodes", str(rdzv.nnodes), "--node-rank", "N"]
    opts += ["--rdzv-endpoint", rdzv.endpoint, "--rdzv-id", rdzv.rdzv_id]
    if spec.cpu:
        opts.append("--cpu")
    if spec.nproc is not None:
        opts += ["--nproc", str(spec.nproc)]
    script = ["-m", spec.script] if spec.module else [shlex.split(spec.command)[0]]
    rest = ["--", *spec.args] if spec.args else []
    return "handyjobs start " + shlex.join([*opts, *script, *rest])


def _has_nvidia_gpu() -> bool:
    """A cheap look (no driver call): does this machine have an NVIDIA GPU device node?"""
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")
