"""Pure: a job spec and the run's choices -> the ``(argv, env)`` that starts it.

One process runs ``python SCRIPT ARGS`` (as the seed README does for one GPU); more run under
``python -m torch.distributed.run --standalone``, whose c10d rendezvous binds a port the OS
picks, so two jobs on one machine never collide on 29500. A node of a multi-node job
(``--nnodes``) runs torchrun with a c10d rendezvous at the endpoint the user gave. A backend
whose scheduler places the processes builds its step around :func:`torchrun_argv`, the one
torchrun command every backend uses, so each rank runs in the same wrapper everywhere.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

from handyjobs.core import procs
from handyjobs.core.records import JobSpec
from handyjobs.structs import frozen

#: How the rendezvous of a multi-process run is recorded.
STANDALONE = "standalone (c10d on a free localhost port)"

# Variables of the caller that describe *its* terminal or tmux client, not the job's pane.
_PANE_VARS = ("TMUX", "TMUX_PANE")
# Set on a runner by its backend; a job started from inside another job must not inherit it.
_RUNNER_VARS = ("HANDYJOBS_RUNNER_OF",)


@frozen
class RunContext:
    """What a run knows beyond its spec: its identity, the GPUs it got, and where it logs."""

    name: str
    run: int
    run_id: str
    gpus: tuple[int, ...] | None
    log_path: str
    #: The job's folder: metrics and progress files live there.
    job_dir: str = ""
    #: The rendezvous port a scheduler's job uses, free on its first node (the runner's).
    rdzv_port: int | None = None
    #: The interpreter that runs :mod:`handyjobs.jobside.rank` around each rank of a job of several
    #: processes (the runner's own: the job's may not have handyjobs); None runs ranks bare.
    rank_python: str | None = None
    #: Nodes the run spans when a scheduler placed it (None: as the spec says).
    nnodes: int | None = None


@frozen
class Launch:
    """The command and environment of one run."""

    argv: list[str]
    env: dict[str, str]
    rendezvous: str | None


def build(
    spec: JobSpec,
    ctx: RunContext,
    base_env: Mapping[str, str],
    pane_env: Mapping[str, str] | None = None,
) -> Launch:
    """Build the run's argv and environment from the spec, the caller's env and the context.

    ``base_env`` is the environment of the shell that ran ``handyjobs start`` (like nohup);
    ``pane_env`` supplies the tmux variables of the pane the job really runs in.
    """
    target: list[str] = ["-m", spec.script] if spec.module else [spec.script]
    rendezvous: str | None = None
    if spec.executable:
        argv = [spec.script, *spec.args]  # as typed: its shebang says how it runs
    elif spec.procs > 1 or spec.max_restarts is not None or spec.rdzv is not None:
        # torchrun also for one process when elastic restarts are asked for: they are its.
        argv = torchrun_argv(spec, ctx, _rendezvous_args(spec))
        rendezvous = STANDALONE if spec.rdzv is None else rendezvous_text(spec)
    else:
        argv = [spec.python, *target, *spec.args]

    env = {k: v for k, v in base_env.items() if k not in _PANE_VARS and k not in _RUNNER_VARS}
    for key in _PANE_VARS:
        if pane_env and key in pane_env:
            env[key] = pane_env[key]
    env.update(dict(spec.env))
    env.update(handyjobs_vars(spec, ctx))
    if spec.cpu:
        # Hide every GPU so that nothing in the job can land on a colleague's card by accident.
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif ctx.gpus is not None:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # numbers as nvidia-smi shows them
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in ctx.gpus)
    return Launch(argv, env, rendezvous)


def torchrun_argv(spec: JobSpec, ctx: RunContext, rendezvous_args: Sequence[str]) -> list[str]:
    """torchrun running the spec's script on this node, each rank in handyjobs' rank wrapper.

    ``rendezvous_args`` says how the nodes meet (``--standalone`` on one machine, a c10d
    endpoint across nodes). With ``ctx.rank_python`` every rank runs in
    :mod:`handyjobs.jobside.rank` (its own log, whole lines on the shared terminal, ``--prefix``).
    """
    restarts = [] if spec.max_restarts is None else [f"--max-restarts={spec.max_restarts}"]
    head = [
        spec.python,
        "-m",
        "torch.distributed.run",
        *rendezvous_args,
        f"--nproc-per-node={spec.procs}",
        *restarts,
    ]
    across_nodes = spec.rdzv is not None or (ctx.nnodes or 1) > 1
    if ctx.rank_python and (spec.procs > 1 or across_nodes):
        # The worker is what torchrun would run itself: python -u SCRIPT ARGS. Every word
        # before the script starts with "-": torchrun names a failed job after the first word
        # that does not (its report then says "train.py FAILED", not the wrapper's name).
        target = ["-m", spec.script] if spec.module else [spec.script]
        wrapper = [ctx.rank_python, f"-m{procs.RANK_WRAPPER}", f"--python={spec.python}"]
        return [*head, "--no-python", *wrapper, "-u", *target, *spec.args]
    return [*head, *(["--module"] if spec.module else []), spec.script, *spec.args]


def _rendezvous_args(spec: JobSpec) -> list[str]:
    """torchrun's rendezvous options: standalone on one machine, c10d at the given endpoint."""
    rdzv = spec.rdzv
    if rdzv is None:
        return ["--standalone"]
    return [
        f"--nnodes={rdzv.nnodes}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={rdzv.endpoint}",
        f"--rdzv-id={rdzv.rdzv_id}",
        # Node 0 hosts the store, said outright: torchrun would otherwise guess from host
        # names, and two nodes on one machine (or an endpoint that is an alias) fool it.
        f"--rdzv-conf=is_host={int(rdzv.node_rank == 0)}",
    ]


def rendezvous_text(spec: JobSpec) -> str | None:
    """How a run's rendezvous is recorded: ``c10d HOST:PORT id ID, node 0 of 2``."""
    rdzv = spec.rdzv
    if rdzv is None:
        return None
    return f"c10d {rdzv.endpoint} id {rdzv.rdzv_id}, node {rdzv.node_rank} of {rdzv.nnodes}"


def handyjobs_vars(spec: JobSpec, ctx: RunContext) -> dict[str, str]:
    """The ``HANDYJOBS_*`` variables through which the CLI tells the job what it chose."""
    out = {
        "HANDYJOBS_JOB": ctx.name,
        "HANDYJOBS_RUN": str(ctx.run),
        "HANDYJOBS_RUN_ID": ctx.run_id,
        "HANDYJOBS_LOG": ctx.log_path,
        "HANDYJOBS_NPROC": str(spec.procs),
    }
    if spec.params:
        # A sweep's values reach the script as arguments and, for scripts that read the
        # environment (or a launcher in between), as HANDYJOBS_PARAM_<KEY> too.
        for key, value in spec.params:
            out[f"HANDYJOBS_PARAM_{_env_key(key)}"] = value
    if spec.group:
        out["HANDYJOBS_GROUP"] = spec.group
    nnodes = ctx.nnodes or (spec.rdzv.nnodes if spec.rdzv else 1)
    if nnodes > 1:
        out["HANDYJOBS_NNODES"] = str(nnodes)
    if ctx.job_dir:
        # Where handyjobs.log_metrics appends, and where trainer.progress reports for `top`.
        out["HANDYJOBS_METRICS_FILE"] = f"{ctx.job_dir}/metrics.jsonl"
        out["HANDYJOBS_PROGRESS_FILE"] = f"{ctx.job_dir}/progress.json"
    if spec.cpu:
        out["HANDYJOBS_DEVICE"] = "cpu"
    if ctx.gpus is not None and not spec.cpu:
        out["HANDYJOBS_GPU_IDS"] = ",".join(str(g) for g in ctx.gpus)
    return out


def _env_key(key: str) -> str:
    """A sweep key as an environment variable suffix: ``lr`` -> ``LR``, ``batch-size`` ->
    ``BATCH_SIZE``."""
    return "".join(c if c.isalnum() else "_" for c in key).upper()


def display(argv: Sequence[str]) -> str:
    """A copy-pasteable rendering of argv for headers and ``show``."""
    return shlex.join(argv)
