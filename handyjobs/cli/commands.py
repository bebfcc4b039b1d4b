"""Every command of ``handyjobs`` and the module that declares it; each is imported only when
it runs (or when shell completion needs them all)."""

from __future__ import annotations

import sys

from handyjobs.errors import UsageError

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from handyjobs.cli.parse import Command

#: The variable the completion script sets when the shell asks (Typer's name for it).
COMPLETE_VAR = "_HANDYJOBS_COMPLETE"

#: Each command and the module (beside this one) that declares it as ``COMMAND``.
COMMANDS = {
    "start": "start",
    "list": "listing",
    "show": "show",
    "attach": "attach",
    "logs": "logs",
    "stop": "stop",
    "restart": "restart",
    "wait": "wait",
    "rm": "remove",
    "clean": "clean",
    "gpus": "gpus",
    "sweep": "sweep",
    "send": "send",
    "config": "config",
    "completion": "completion",
    "top": "top",
    "plot": "plot",
    "metrics": "metrics",
    "pause": "pause",
    "resume": "resume",
    "kill": "kill",
    "hold": "hold",
    "release": "release",
    "edit": "edit",
    "priority": "priority",
}


def command(name: str) -> Command:
    """The declaration of a command, importing only its own module."""
    module = COMMANDS.get(name)
    if module is None:
        raise UsageError(f"no such command {name!r} (see `handyjobs --help`)")
    full = f"handyjobs.cli.{module}"
    __import__(full)  # not importlib.import_module: importlib is an import of its own
    found: Command = sys.modules[full].COMMAND
    return found
