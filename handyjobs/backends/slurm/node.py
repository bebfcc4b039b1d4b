"""One node's torchrun inside a Slurm step: ignore SIGUSR1, name the store's node, measure.

Invoked by ``srun`` as
``python -m handyjobs.backends.slurm.node HEAD -- PYTHON -m torch.distributed.run ...``
on every node of the allocation. Before it starts torchrun it

- sets SIGUSR1 to ignored: Slurm's time-limit warning reaches every process of the step,
  and torchrun, which has no handler for it, would die of it. Its workers inherit the
  disposition; a trainer that wants the warning installs its own handler.
- adds ``--rdzv-conf=is_host=1`` on the head node and ``is_host=0`` elsewhere: the node that
  hosts the rendezvous store is named, not guessed from host names (which need not match
  Slurm's node names).

It then stays, as torchrun's parent, to measure what the job used on this node (the runner on
the first node sees only its own machine): the CPU time of every process torchrun waited for
(``wait4``), and samples of its processes' memory and GPUs. It writes that to
``node-cost-RUN-NODE-RESTART.json`` in the job's folder, and ends as torchrun ended. The stop
signals torchrun handles (Slurm sends them to every process of the step) it leaves to torchrun.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

_USAGE = (
    "usage: python -m handyjobs.backends.slurm.node HEAD -- COMMAND..."
    " (started by handyjobs inside Slurm)"
)
#: What torchrun itself handles: Slurm signals every process of the step, torchrun included,
#: so the wrapper lets them pass and waits for torchrun's end instead of dying before it.
_LEFT_TO_TORCHRUN = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
#: The file each node writes its measure to, in the job's folder.
REPORT = "node-cost-{run_id}-{node}-{restart}.json"


def node_argv(args: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """The torchrun argv for this node: ``is_host`` set from ``SLURMD_NODENAME`` versus HEAD."""
    if len(args) < 3 or args[1] != "--":
        raise ValueError(_USAGE)
    head, command = args[0], list(args[2:])
    is_host = int(env.get("SLURMD_NODENAME", "") == head)
    try:
        at = command.index("torch.distributed.run") + 1
    except ValueError:
        return command  # not torchrun: nothing to add
    return [*command[:at], f"--rdzv-conf=is_host={is_host}", *command[at:]]


def report_path(env: Mapping[str, str]) -> Path | None:
    """Where this node writes its measure (None when the run's folder is not named)."""
    log, run_id = env.get("HANDYJOBS_LOG"), env.get("HANDYJOBS_RUN_ID")
    if not log or not run_id:
        return None
    node = env.get("SLURMD_NODENAME") or os.uname().nodename
    restart = env.get("SLURM_RESTART_COUNT", "0")
    name = REPORT.format(run_id=run_id, node=node, restart=restart)
    return Path(log).parent / name.replace("/", "_")


def run_measured(command: list[str], report: Path, env: Mapping[str, str]) -> int:
    """Run torchrun as a child, write this node's measure, return its wait status."""
    # Imported here: the wrapper starts on every node before torchrun; the exec path and the
    # usage error need none of it.
    from handyjobs.jobside.sampler import Sampler, node_cost

    for sig in _LEFT_TO_TORCHRUN:
        signal.signal(sig, signal.SIG_IGN)
    pid = os.posix_spawnp(command[0], command, dict(env), setsigdef=_LEFT_TO_TORCHRUN)
    sampler = Sampler(
        env.get("HANDYJOBS_RUN_ID", ""),
        env,
        gpus=env.get("CUDA_VISIBLE_DEVICES") != "",
        within=pid,
    )
    sampler.start()
    _, status, rusage = os.wait4(pid, 0)
    cost = sampler.finish(rusage)
    node = env.get("SLURMD_NODENAME") or os.uname().nodename
    tmp = report.with_name(f".{report.name}.tmp")
    # Best effort: a node that cannot write (full disk) costs only its share of the figure.
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps(node_cost(node, cost).to_dict()) + "\n")
        os.replace(tmp, report)
    return status


def _end_as(status: int) -> None:
    """Exit as the child ended: its exit code, or killed by its signal."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):  # SIGKILL's cannot be changed
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        sys.exit(128 + sig)  # a signal this process cannot die of (not reached otherwise)
    sys.exit(os.waitstatus_to_exitcode(status))


def main(argv: list[str] | None = None) -> None:
    """Entry point: this node's torchrun with SIGUSR1 ignored, measured where it can be."""
    try:
        command = node_argv(sys.argv[1:] if argv is None else argv, os.environ)
    except ValueError as exc:
        sys.exit(str(exc))
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    # Workers inherit the SIG_IGN: tell the trainer it is ours, not the script's, to take over.
    # (Kept in sync with handyjobs.trainer.stopping.IGNORED_FOR_TORCHRUN_ENV; no torch import.)
    os.environ["HANDYJOBS_IGNORED_FOR_TORCHRUN"] = "SIGUSR1"
    # Each rank names its node in its log (node names are Slurm's, which the hosts may not know).
    if os.environ.get("SLURMD_NODENAME"):
        os.environ["HANDYJOBS_NODE"] = os.environ["SLURMD_NODENAME"]
    report = report_path(os.environ)
    try:
        if report is None:
            os.execvp(command[0], command)
        status = run_measured(command, report, os.environ)
    except OSError as exc:
        sys.exit(f"handyjobs: cannot run {command[0]!r}: {exc.strerror}")
    _end_as(status)


if __name__ == "__main__":
    main()
