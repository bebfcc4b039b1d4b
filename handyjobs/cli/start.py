"""``handyjobs start``: check, register and launch a job; print where it runs (or why it waits).

Its options are the core's table (:data:`handyjobs.core.options.START_OPTIONS`) and each
backend's own (declared in the backend's folder), merged here; the request, ``--like`` and
``sweep``'s options come from the same declarations.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping

from handyjobs.backends.slurm import options as slurm_options
from handyjobs.cli.parse import Arg, Command, Parsed
from handyjobs.core import options as table
from handyjobs.core.options import BackendOptions, Option
from handyjobs.core.states import JobState
from handyjobs.errors import UsageError
from handyjobs.structs import replace

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from handyjobs.core.records import JobRecord
    from handyjobs.core.spec import BackendRequest, StartRequest

#: Each backend's own options of start and sweep, declared in its folder.
BACKENDS: tuple[BackendOptions, ...] = (slurm_options,)
#: ``start``'s options: the core's, then each backend's.
OPTIONS: tuple[Option, ...] = (*table.START_OPTIONS, *(o for b in BACKENDS for o in b.OPTIONS))

SCRIPT_HELP = "Script to run (a module with -m, a command with --exec)."


def backend_part(given: Mapping[str, object]) -> BackendRequest | None:
    """The request's backend part: the first backend whose options were typed, if any."""
    for backend in BACKENDS:
        part = backend.request(given)
        if part is not None:
            return part
    return None


def _like(name: str, given: Mapping[str, object], new_args: list[str] | None) -> StartRequest:
    """A request from another job's spec, changed by the options typed on this command line."""
    if given.get("nnodes") is not None:
        raise UsageError("--like starts a job on this machine; give --nnodes without --like")
    # lazy: only this command pays for it, not `--help` or the other commands
    from handyjobs.core import jobs

    spec = jobs.get_job(name).spec
    base = table.request_from_spec(spec)
    for backend in BACKENDS:
        base = backend.like(base, spec, given)
    req = table.request(base, given)
    return req if new_args is None else replace(req, args=new_args)


def make_request(p: Parsed) -> StartRequest:
    """The start request of a parsed command line (with ``--like``, from another job's spec)."""
    from handyjobs.core import spec  # lazy: `start --help` does not pay for it

    script, like = p.text("script"), p.text("like")
    if like is not None:
        # With --like, what is typed where SCRIPT goes are the new arguments.
        new_args = None if script is None else [script, *p.items("args")]
        req = _like(like, p.typed, new_args)
    elif script is None:
        raise UsageError("give the SCRIPT to run (or --like NAME to start from another job)")
    else:
        base = spec.StartRequest(script=script, args=p.items("args"), backend=backend_part(p.typed))
        req = table.request(base, p.typed)
    if p.flag("attach") and req.goes_to != spec.LOCAL_BACKEND:
        raise UsageError(
            f"a {req.goes_to.capitalize()} job has no terminal to attach to: use --follow"
        )
    return req


def _run(p: Parsed) -> int | None:
    req = make_request(p)
    from handyjobs.core import jobs, starting  # lazy: `start --help` does not pay for it
    from handyjobs.core.records import returncode  # lazy: as above

    record = starting.start_job(req)
    announce(record, req)
    sys.stdout.flush()
    if p.flag("attach"):
        from handyjobs.cli.attach import exec_attach  # lazy: only --attach needs it

        exec_attach(record.name)
    if p.flag("follow"):
        from handyjobs.views.logview import follow_to_end  # lazy: only --follow reads the log

        follow_to_end(record.name)
        return returncode(jobs.get_job(record.name).current)
    return None


COMMAND = Command(
    "start",
    "Start SCRIPT as a job in its own tmux session (torchrun when several processes).",
    _run,
    args=(Arg("script", SCRIPT_HELP), Arg("args", "Arguments for the script.", many=True)),
    options=OPTIONS,
    passthrough=True,
)


def announce(record: JobRecord, req: StartRequest, brief: bool = False) -> None:
    """Say where the job runs, or why it waits; with ``brief``, one line."""
    from handyjobs import backends  # lazy: a failed start never renders
    from handyjobs.views import render

    run = record.current
    submitted = render.submitted_lines(record)  # a scheduler took it: its own words
    if submitted:
        print("\n".join(submitted))
        return
    place = backends.describe(run.backend).place(record)
    if run.state is JobState.QUEUED:
        why = render.wait_text(run.wait) if run.wait else "waiting"
        print(f"queued {record.name} ({place}): {why}")
    else:
        where = (
            f"GPUs {','.join(map(str, run.gpus))}"
            if run.gpus
            else "CPU"
            if record.spec.cpu
            else "the caller's devices"
        )
        procs = f"{run.nproc} process{'es' if run.nproc > 1 else ''}"
        print(f"started {record.name} in {place} on {where}, {procs}")
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
