"""``handyjobs attach``: put this terminal into the job's tmux session."""

from __future__ import annotations

import os
import sys

from handyjobs.cli.args import NAME
from handyjobs.cli.parse import Command, Parsed
from handyjobs.errors import JobStateError

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from typing import NoReturn


def exec_attach(name: str) -> NoReturn:
    """Replace this process with the command the core gives to attach (a terminal needed)."""
    # lazy: only this command pays for it, not `--help` or the other commands
    from handyjobs.core import jobs

    argv = jobs.attach_argv(name)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise JobStateError(
            f"attach needs a terminal; follow the output with `handyjobs logs {name} -f`"
        )
    env = dict(os.environ)
    if "switch-client" not in argv:
        env.pop("TMUX", None)  # nesting into our server from another tmux is deliberate
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)


def _run(p: Parsed) -> None:
    name = p.text("name")
    assert name is not None
    exec_attach(name)


COMMAND = Command(
    "attach",
    "Put this terminal into the job's tmux session (detach with Ctrl-b d).",
    _run,
    args=(NAME,),
)
