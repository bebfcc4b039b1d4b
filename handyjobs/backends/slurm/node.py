"""One node's torchrun inside a Slurm step: ignore SIGUSR1, say which node hosts the store, exec.

Invoked by ``srun`` as
``python -m handyjobs.backends.slurm.node HEAD -- PYTHON -m torch.distributed.run ...``
on every node of the allocation. It replaces itself with torchrun (no process in between), after

- setting SIGUSR1 to ignored: Slurm's time-limit warning reaches every process of the step,
  and torchrun, which has no handler for it, would die of it. Its workers inherit the
  disposition; a trainer that wants the warning installs its own handler.
- adding ``--rdzv-conf=is_host=1`` on the head node and ``is_host=0`` elsewhere: the node that
  hosts the rendezvous store is named, not guessed from host names (which need not match
  Slurm's node names).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping, Sequence

_USAGE = (
    "usage: python -m handyjobs.backends.slurm.node HEAD -- COMMAND..."
    " (started by handyjobs inside Slurm)"
)


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


def main(argv: list[str] | None = None) -> None:
    """Entry point: exec this node's torchrun with SIGUSR1 ignored."""
    try:
        command = node_argv(sys.argv[1:] if argv is None else argv, os.environ)
    except ValueError as exc:
        sys.exit(str(exc))
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    # Workers inherit the SIG_IGN: tell the trainer it is ours, not the script's, to take over.
    # (Kept in sync with handyjobs.trainer.stopping.IGNORED_FOR_TORCHRUN_ENV; no torch import.)
    os.environ["HANDYJOBS_IGNORED_FOR_TORCHRUN"] = "SIGUSR1"
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        sys.exit(f"handyjobs: cannot run {command[0]!r}: {exc.strerror}")


if __name__ == "__main__":
    main()
