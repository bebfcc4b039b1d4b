"""``handyjobs list`` and ``handyjobs show``: what runs where, and everything on one record."""

from __future__ import annotations

from typing import Annotated

import typer

from handyjobs import jobs
from handyjobs.cli.args import NameArg
from handyjobs.cli.common import JSON_HELP, do_list, dump_json


def list_(
    all_jobs: Annotated[bool, typer.Option("--all", "-a", help="Every record.")] = False,
    state: Annotated[list[str] | None, typer.Option(help="Only these states.")] = None,
    group: Annotated[str | None, typer.Option(help="Only this group (a sweep).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Jobs, newest first: running and queued, and the 20 latest finished."""
    do_list(all_jobs, state, as_json, group)


def show(
    name: NameArg,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Everything on a job's record."""
    record = jobs.get_job(name)
    if as_json:
        dump_json(record.to_dict())
        return
    from handyjobs import render

    render.print_record(record)
