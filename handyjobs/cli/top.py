"""``handyjobs top``: jobs, their processes' CPU and memory, GPUs and progress, live."""

from __future__ import annotations

from handyjobs.cli.parse import Command, Parsed
from handyjobs.core.options import option
from handyjobs.errors import UsageError


def _run(p: Parsed) -> int:
    from handyjobs.views import top as live  # lazy: the live view's imports cost start-up

    interval = p.real("interval")
    assert interval is not None
    if not interval > 0:
        raise UsageError(f"--interval {interval}: give a number of seconds above 0")
    return live.run_top(interval, p.flag("once"))


COMMAND = Command(
    "top",
    "A live view of jobs: state, CPU, memory, GPUs, progress, last line (q quits).",
    _run,
    options=(
        option("--interval", "float", "S", "Seconds between refreshes.", default=1.0),
        option("--once", "flag", "", "Print one frame and exit."),
    ),
)
