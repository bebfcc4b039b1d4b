"""``handyjobs rm``: forget finished jobs (logs kept unless --logs)."""

from __future__ import annotations

from handyjobs.cli.args import NAMES
from handyjobs.cli.common import each_name
from handyjobs.cli.parse import Command, Parsed
from handyjobs.core.options import option
from handyjobs.errors import UsageError

LOGS = option("--logs", "flag", "", "Delete their logs too.", name="with_logs")


def _run(p: Parsed) -> int:
    # lazy: only this command pays for it, not `--help` or the other commands
    from handyjobs.core import control

    names = p.items("names")
    if not names:
        raise UsageError("give the jobs to remove: NAME... (or `handyjobs clean`)")

    def one(name: str) -> None:
        kept = control.remove_job(name, force=p.flag("force"), logs=p.flag("with_logs"))
        where = f"; its log is kept: `handyjobs logs {name} --removed` ({kept})" if kept else ""
        print(f"removed {name}{where}")

    return each_name(names, one)


COMMAND = Command(
    "rm",
    "Remove finished jobs from the registry (logs kept unless --logs).",
    _run,
    args=(NAMES,),
    options=(option("--force", "flag", "", "Stop active jobs first."), LOGS),
)
