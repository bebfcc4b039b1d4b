"""The srun step a Slurm job's runner starts: one torchrun per node, meeting on the head node.

Pure: the allocation as Slurm describes it in the batch script's environment, and the command
built from it. Each node's torchrun is wrapped by :mod:`handyjobs.backends.slurm.node`, which
names the node that hosts the rendezvous store; one process on one node runs plain python, as
on this machine.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from handyjobs.core.records import JobSpec
from handyjobs.jobside import launch
from handyjobs.structs import frozen


@frozen
class Allocation:
    """The allocation the batch script runs in, as Slurm describes it in the environment."""

    job_id: str
    nnodes: int
    #: The node the batch script runs on: Slurm's first node of the allocation.
    head: str
    nodelist: str = ""
    cpus_per_task: int | None = None
    restarts: int = 0
    #: The head node's address as Slurm knows it (its NodeAddr): node names need not resolve.
    head_addr: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Allocation:
        """Read ``SLURM_JOB_ID``, ``SLURM_JOB_NUM_NODES``, ``SLURMD_NODENAME`` and friends."""
        try:
            job_id = env["SLURM_JOB_ID"]
            nnodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or "1")
            head = env.get("SLURMD_NODENAME") or first_host(env["SLURM_JOB_NODELIST"])
        except (KeyError, ValueError) as exc:
            raise ValueError(f"not inside a Slurm allocation ({exc} is missing)") from exc
        cpus = env.get("SLURM_CPUS_PER_TASK")
        return cls(
            job_id=job_id,
            nnodes=nnodes,
            head=head,
            nodelist=env.get("SLURM_JOB_NODELIST", ""),
            cpus_per_task=int(cpus) if cpus and cpus.isdigit() else None,
            restarts=int(env.get("SLURM_RESTART_COUNT") or 0),
        )


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``gpu[07-09,12],cpu1`` -> ``gpu07``."""
    m = re.match(r"^([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m or not m.group(1):
        raise ValueError(f"cannot read the node list {nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    first = ranges.split(",", 1)[0].split("-", 1)[0]
    return prefix + first


def endpoint(alloc: Allocation, port: int) -> str:
    """``ADDRESS:PORT``: where the nodes of the allocation meet (the head's address, else its
    name)."""
    host = alloc.head_addr or alloc.head
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_node_addr(text: str) -> str:
    """``scontrol show node -o NAME`` -> the node's NodeAddr ("" when it says none)."""
    m = re.search(r"(?:^|\s)NodeAddr=(\S+)", text)
    return m.group(1) if m and m.group(1) not in ("(null)", "None") else ""


def step_argv(
    spec: JobSpec, alloc: Allocation, port: int, ctx: launch.RunContext | None = None
) -> list[str]:
    """``srun`` starting one wrapped torchrun per node, all meeting on the head node.

    The torchrun command is :func:`handyjobs.jobside.launch.torchrun_argv`, the one every
    backend uses: with ``ctx.rank_python`` each rank runs in handyjobs' rank wrapper, so per-rank
    logs and ``--prefix`` work here as on one machine.
    """
    srun = [
        "srun",
        # sbatch ran with --export=NONE, which srun would inherit: the job's environment
        # (the caller's, from env.json) must reach the tasks.
        "--export=ALL",
        "--unbuffered",  # progress lines as they come, not in 4 KiB blocks
        "--kill-on-bad-exit=1",  # a node whose torchrun fails ends the step on every node
        f"--nodes={alloc.nnodes}",
        f"--ntasks={alloc.nnodes}",
        "--ntasks-per-node=1",
    ]
    if alloc.cpus_per_task:
        # srun does not take the batch job's --cpus-per-task from its environment (22.05+).
        srun.append(f"--cpus-per-task={alloc.cpus_per_task}")
    if spec.slurm is not None:
        srun += spec.slurm.srun_opts  # --srun-opt: after handyjobs' own, so they win
    node = [spec.python, "-m", "handyjobs.backends.slurm.node", alloc.head, "--"]
    if spec.executable:
        # --exec: the command as typed, once per node; its shebang says how it runs.
        return [*srun, *node, spec.script, *spec.args]
    if alloc.nnodes == 1 and spec.procs == 1 and spec.max_restarts is None:
        # One process, as on this machine: plain python, whose exit code is the job's own.
        target = ["-m", spec.script] if spec.module else [spec.script]
        return [*srun, *node, spec.python, *target, *spec.args]
    ctx = ctx or launch.RunContext("", 0, "", None, "", nnodes=alloc.nnodes)
    rdzv = [
        f"--nnodes={alloc.nnodes}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint(alloc, port)}",
        f"--rdzv-id={alloc.job_id}",
    ]
    return [*srun, *node, *launch.torchrun_argv(spec, ctx, rdzv)]


#: Variables the shell itself changes: never the ``--setup`` lines' doing.
_SHELLS_OWN = frozenset({"_", "SHLVL", "PWD", "OLDPWD"})


def setup_changes(
    before: Mapping[str, str], after: Mapping[str, str], job: Mapping[str, str]
) -> dict[str, str]:
    """What the ``--setup`` lines changed (``before`` and ``after`` them), made to the job's
    own environment ``job``: a variable they set takes its value; one they grew at either end
    (``module load`` puts its folder in front of ``PATH``) grows the job's value the same way,
    so the job keeps its own ``PATH`` (its virtual environment) with the module's in front."""
    out = {}
    for key, value in after.items():
        old = before.get(key)
        if old == value or key in _SHELLS_OWN or key.startswith(("SLURM_", "HANDYJOBS_")):
            continue
        mine = job.get(key)
        if old and mine is not None and value.endswith(old):
            out[key] = value[: len(value) - len(old)] + mine
        elif old and mine is not None and value.startswith(old):
            out[key] = mine + value[len(old) :]
        else:
            out[key] = value
    return out


def rendezvous(spec: JobSpec, alloc: Allocation, port: int) -> str | None:
    """How the run records its rendezvous (``show``); None for a single process or --exec."""
    if spec.executable or (alloc.nnodes == 1 and spec.procs == 1 and spec.max_restarts is None):
        return None
    return f"c10d {endpoint(alloc, port)} id={alloc.job_id} nnodes={alloc.nnodes}"
