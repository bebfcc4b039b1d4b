"""``handyjobs list``: what runs where, since when, how it ended."""

from __future__ import annotations

from handyjobs.cli.args import JSON
from handyjobs.cli.common import do_list
from handyjobs.cli.parse import Command, Parsed
from handyjobs.core.options import option

#: Masked values stay masked unless asked: a secret given as --env must not reach a log or
#: a script's output by a plain `list --json`.
SHOW_SECRETS = option("--show-secrets", "flag", "", "Show --env values (masked as ... otherwise).")


def _run(p: Parsed) -> None:
    do_list(
        p.flag("all_jobs"),
        p.items("state"),
        p.flag("as_json"),
        p.text("metric"),
        p.text("group"),
        p.flag("show_secrets"),
    )


COMMAND = Command(
    "list",
    "Jobs, newest first: running and queued, and the 20 latest finished.",
    _run,
    options=(
        option("-a --all", "flag", "", "Every record.", name="all_jobs"),
        option("--state", "list", "STATE", "Only these states (repeatable, or a,b)."),
        option("--group", "str", "GROUP", "Only this group (a sweep)."),
        JSON,
        SHOW_SECRETS,
        option("--metric", "str", "NAME", "Add a column: this metric's last value."),
    ),
)
