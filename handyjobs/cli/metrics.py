"""``handyjobs metrics``: every value jobs logged, as CSV (the default), JSON or TensorBoard."""

from __future__ import annotations

import sys
from pathlib import Path

from handyjobs.cli.args import GROUP, JSON, NAMES
from handyjobs.cli.common import dump_json
from handyjobs.cli.parse import Command, Parsed
from handyjobs.core.options import option
from handyjobs.errors import UsageError


def _run(p: Parsed) -> None:
    from handyjobs.views import export  # lazy: reads metrics files, only for this command

    board = p.text("tensorboard")
    if sum([p.flag("csv"), p.flag("as_json"), board is not None]) > 1:
        raise UsageError("give one of --csv, --json and --tensorboard DIR")
    if board is not None:
        export.need_tensorboard()  # says how to get it before reading anything
    found = export.rows(p.items("names"), p.text("group"))
    if board is not None:
        for folder in export.write_tensorboard(found, Path(board)):
            print(f"wrote {folder}")
    elif p.flag("as_json"):
        dump_json([r.to_dict() for r in found])
    else:
        export.write_csv(found, sys.stdout)


COMMAND = Command(
    "metrics",
    "Every value jobs logged, one row each (job, run, step, time, metric, value, params).",
    _run,
    args=(NAMES,),
    options=(
        GROUP,
        option("--csv", "flag", "", "CSV with a header (the default): pandas.read_csv reads it."),
        JSON,
        option("--tensorboard", "str", "DIR", "Write TensorBoard event files, one folder a job."),
    ),
)
