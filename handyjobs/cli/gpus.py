"""``handyjobs gpus``: each GPU's memory, use, processes, and the job that holds it."""

from __future__ import annotations

from handyjobs.cli.args import JSON
from handyjobs.cli.common import dump_json
from handyjobs.cli.parse import Command, Parsed


def _run(p: Parsed) -> None:
    # lazy: only this command pays for it, not `--help` or the other commands
    from handyjobs.core import jobs
    from handyjobs.views import render

    discovery, held = jobs.gpu_overview()
    if p.flag("as_json"):
        dump_json(render.gpus_json(discovery, held))
    else:
        render.print_gpus(discovery, held)


COMMAND = Command(
    "gpus",
    "GPUs, their memory and use, their processes, and the job that holds each.",
    _run,
    options=(JSON,),
)
