"""``handyjobs logs``: the job's output as its terminal showed it; ``-f`` follows it to the end."""

from __future__ import annotations

from handyjobs.cli.args import NAME
from handyjobs.cli.parse import Command, Parsed
from handyjobs.core.options import option
from handyjobs.views.logview import show_log


def _run(p: Parsed) -> int | None:
    name = p.text("name")
    assert name is not None
    return show_log(
        name,
        p.number("lines"),
        p.flag("follow"),
        rank=p.number("rank"),
        prefix=p.flag("prefix"),
        raw=p.flag("raw"),
        plain=p.flag("plain"),
    )


COMMAND = Command(
    "logs",
    "Print a job's output as its terminal showed it (every byte with --raw).",
    _run,
    args=(NAME,),
    options=(
        option("-n --lines", "int", "N", "Only the last N lines (as shown)."),
        option("-f --follow", "flag", "", "Until the job ends; exit with its code."),
        option("--rank", "int", "N", "Rank N's own log (jobs of several processes)."),
        option("--prefix", "flag", "", "Label every line with its rank (or [launcher])."),
        option("--raw", "flag", "", "The bytes as written: redraws, escapes, rank tags."),
        option("--plain", "flag", "", "No colours (the default when piped)."),
    ),
)
