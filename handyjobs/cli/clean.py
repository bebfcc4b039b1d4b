"""``handyjobs clean``: forget every finished job (logs kept unless --logs)."""

from __future__ import annotations

from handyjobs.cli.common import parse_states
from handyjobs.cli.parse import Command, Parsed
from handyjobs.cli.remove import LOGS
from handyjobs.core.options import option


def _run(p: Parsed) -> None:
    # lazy: only this command pays for it, not `--help` or the other commands
    from handyjobs.core import control, paths

    names = control.clean_jobs(logs=p.flag("with_logs"), states=parse_states(p.items("state")))
    print(f"removed {len(names)} finished job{'s' if len(names) != 1 else ''}")
    if names and not p.flag("with_logs"):
        print(
            f"their logs are kept in {paths.removed_dir()}: `handyjobs logs NAME --removed` "
            f"shows one ({', '.join(names)})"
        )


COMMAND = Command(
    "clean",
    "Remove every finished job from the registry.",
    _run,
    options=(LOGS, option("--state", "list", "STATE", "Only these end states.")),
)
