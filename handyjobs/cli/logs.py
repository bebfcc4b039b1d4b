"""``handyjobs logs``: the job's output as its terminal showed it; ``-f`` follows it to the end.

Several jobs (``logs -f a b``, ``logs -f --group G``): each line tagged with its job, all
followed together until every one has ended.
"""

from __future__ import annotations

from handyjobs.cli.args import GROUP
from handyjobs.cli.common import pick_names
from handyjobs.cli.parse import Arg, Command, Parsed
from handyjobs.core.options import option
from handyjobs.errors import UsageError


def _run(p: Parsed) -> int | None:
    # lazy: only this command pays for it, not `--help` or the other commands
    from handyjobs.views.logview import show_log, show_logs, show_removed_log

    names, group = p.items("names"), p.text("group")
    if not names and group is None:
        raise UsageError("give the job: NAME (or several, or --group GROUP)")
    if p.flag("removed"):
        if len(names) != 1 or group is not None or p.flag("follow") or p.number("rank") is not None:
            raise UsageError(
                "--removed shows the log a removed job of one NAME kept (no -f, --rank)"
            )
        show_removed_log(names[0], p.number("lines"), raw=p.flag("raw"), plain=p.flag("plain"))
        return None
    if len(names) == 1 and group is None:
        return show_log(
            names[0],
            p.number("lines"),
            p.flag("follow"),
            rank=p.number("rank"),
            prefix=p.flag("prefix"),
            raw=p.flag("raw"),
            plain=p.flag("plain"),
        )
    several = [o for o in ("rank", "prefix", "raw") if p.values[o] not in (None, False)]
    if several:
        raise UsageError(
            f"--{several[0]} reads one job's log; several jobs are shown merged, each line "
            "tagged with its job"
        )
    picked = pick_names(names, group, False, (), "whose logs to show")
    return show_logs(picked, p.number("lines"), p.flag("follow"), plain=p.flag("plain"))


COMMAND = Command(
    "logs",
    """Print a job's output as its terminal showed it (every byte with --raw).

    Several jobs (NAME NAME..., or --group): each line tagged with its job; with -f they are
    followed together until all have ended (exit 0 when all succeeded, else the first
    failure's code).""",
    _run,
    args=(Arg("names", "The job (or several).", many=True, complete="jobs"),),
    options=(
        option("-n --lines", "int", "N", "Only the last N lines (as shown)."),
        option("-f --follow", "flag", "", "Until the job ends; exit with its code."),
        GROUP,
        option("--rank", "int", "N", "Rank N's own log (jobs of several processes)."),
        option("--prefix", "flag", "", "Label every line with its rank (or [launcher])."),
        option("--raw", "flag", "", "The bytes as written: redraws, escapes, rank tags."),
        option("--plain", "flag", "", "No colours (the default when piped)."),
        option("--removed", "flag", "", "The log a removed job of this name kept (`rm`, `clean`)."),
    ),
)
