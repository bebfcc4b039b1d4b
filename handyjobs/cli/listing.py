"""``handyjobs list`` and ``handyjobs show``: what runs where, and everything on one record."""

from __future__ import annotations

from typing import Annotated

import typer

from handyjobs.cli.args import NameArg
from handyjobs.cli.common import JSON_HELP, do_list, dump_json
from handyjobs.views import observe


def list_(
    all_jobs: Annotated[bool, typer.Option("--all", "-a", help="Every record.")] = False,
    state: Annotated[list[str] | None, typer.Option(help="Only these states.")] = None,
    group: Annotated[str | None, typer.Option(help="Only this group (a sweep).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
    metric: Annotated[
        str | None, typer.Option(help="Add a column: this metric's last value.")
    ] = None,
) -> None:
    """Jobs, newest first: running and queued, and the 20 latest finished."""
    do_list(all_jobs, state, as_json, metric, group)


def show(
    name: NameArg,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Everything on a job's record, what it cost, and its metrics' last and best values."""
    view = observe.job_view(name)
    if as_json:
        doc = view.record.to_dict()
        doc["metrics"] = {s.metric: s.to_dict() for s in view.metrics}
        dump_json(doc)
        return
    from handyjobs.views import render

    render.print_record(view.record, view.metrics)
