"""``handyjobs start``: check, register and launch a job; print where it runs."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from handyjobs import jobs
from handyjobs.errors import UsageError
from handyjobs.records import JobState, returncode
from handyjobs.sbatch import SlurmRequest
from handyjobs.spec import NodesRequest, StartRequest


def _has_nvidia_gpu() -> bool:
    """A cheap look (no driver call): does this machine have an NVIDIA GPU device node?"""
    import os

    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")


def start(
    script: Annotated[str, typer.Argument(help="Script to run (or module with -m).")],
    args: Annotated[list[str] | None, typer.Argument(help="Arguments for the script.")] = None,
    gpus: Annotated[str | None, typer.Option(help="GPUs by nvidia-smi index or UUID: 2,4")] = None,
    ngpus: Annotated[int | None, typer.Option(help="Any N free GPUs.")] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="Run on the CPU (gloo for DDP).")] = False,
    nproc: Annotated[int | None, typer.Option(help="Processes (default: one per GPU).")] = None,
    name: Annotated[str | None, typer.Option(help="Job and tmux session name.")] = None,
    env: Annotated[list[str] | None, typer.Option(help="Extra KEY=VALUE for the job.")] = None,
    cwd: Annotated[str | None, typer.Option(help="Working directory of the job.")] = None,
    module: Annotated[bool, typer.Option("-m", "--module", help="SCRIPT is a module.")] = False,
    python: Annotated[str | None, typer.Option(help="Python to run the job with.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Queue until the GPUs are free.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Use GPUs even if busy.")] = False,
    attach: Annotated[bool, typer.Option("--attach", help="Attach to it at once.")] = False,
    follow: Annotated[bool, typer.Option("--follow", help="Follow its log to the end.")] = False,
    nnodes: Annotated[int | None, typer.Option(help="Machines in all (start on each).")] = None,
    node_rank: Annotated[int | None, typer.Option(help="0 on the node hosting the store.")] = None,
    rdzv_endpoint: Annotated[str | None, typer.Option(help="HOST:PORT on node 0.")] = None,
    rdzv_id: Annotated[str | None, typer.Option(help="The id node 0 printed.")] = None,
    slurm: Annotated[bool, typer.Option("--slurm", help="Submit to Slurm (sbatch).")] = False,
    nodes: Annotated[int | None, typer.Option(help="Slurm: nodes.")] = None,
    gpus_per_node: Annotated[int | None, typer.Option(help="Slurm: GPUs per node.")] = None,
    partition: Annotated[str | None, typer.Option(help="Slurm: partition.")] = None,
    time: Annotated[str | None, typer.Option(help="Slurm: time limit (HH:MM:SS).")] = None,
    account: Annotated[str | None, typer.Option(help="Slurm: account.")] = None,
    mem: Annotated[str | None, typer.Option(help="Slurm: memory per node (64G).")] = None,
    constraint: Annotated[str | None, typer.Option(help="Slurm: node features.")] = None,
    slurm_arg: Annotated[
        list[str] | None, typer.Option(help="Slurm: any sbatch option, --slurm-arg=--qos=high.")
    ] = None,
    requeue: Annotated[
        bool, typer.Option("--requeue", help="Slurm: requeue after the time-limit warning.")
    ] = False,
    signal_before: Annotated[
        int | None, typer.Option(help="Slurm: SIGUSR1 this many s before the limit (60).")
    ] = None,
) -> None:
    """Start SCRIPT as a job in its own tmux session (torchrun when several processes)."""
    slurm_req = SlurmRequest(
        slurm,
        nodes,
        gpus_per_node,
        partition,
        time,
        account,
        mem,
        constraint,
        tuple(slurm_arg or ()),
        requeue,
        signal_before,
    )
    node_req = NodesRequest(nnodes, node_rank, rdzv_endpoint, rdzv_id)
    if slurm and attach:
        raise UsageError("a Slurm job has no terminal to attach to: use --follow")
    req = StartRequest(
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
        nodes=node_req if node_req != NodesRequest() else None,
        slurm=slurm_req if slurm_req != SlurmRequest(submit=False) else None,
    )
    record = jobs.start_job(req)
    run = record.current
    from handyjobs import render

    if record.spec.slurm is not None:
        print("\n".join(render.submitted_lines(record)))
    elif run.state is JobState.QUEUED:
        why = render.wait_text(run.wait) if run.wait else "waiting for its GPUs"
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
    if record.spec.rdzv is not None:
        print("\n".join(render.nodes_lines(record)))
    if record.spec.slurm is None:
        print(f"  log:    {record.log_path}")
        print(
            f"  attach: handyjobs attach {record.name}    follow: handyjobs logs {record.name} -f"
        )
    sys.stdout.flush()
    if attach:
        from handyjobs.cli.attach import exec_attach

        exec_attach(record.name)
    if follow:
        from handyjobs.cli.logs import follow_to_end

        follow_to_end(record.name)
        raise typer.Exit(returncode(jobs.get_job(record.name).current))
