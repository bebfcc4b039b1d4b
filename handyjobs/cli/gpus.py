"""``handyjobs gpus``: each GPU's memory, use, processes, and the job that holds it."""

from __future__ import annotations

from typing import Annotated

import typer

from handyjobs.cli.common import JSON_HELP, dump_json
from handyjobs.core import jobs


def gpus(as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """GPUs, their memory and use, their processes, and the job that holds each."""
    from handyjobs.views import render

    discovery, held = jobs.gpu_overview()
    if as_json:
        dump_json(render.gpus_json(discovery, held))
    else:
        render.print_gpus(discovery, held)
