"""Arguments several commands declare alike: job names, completed from the registry."""

from __future__ import annotations

from typing import Annotated

import typer

from handyjobs.cli.common import complete_names

NameArg = Annotated[str, typer.Argument(help="The job.", autocompletion=complete_names)]
NamesArg = Annotated[
    list[str] | None, typer.Argument(help="The jobs.", autocompletion=complete_names)
]
GroupOpt = Annotated[str | None, typer.Option(help="Every job of this group.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every job.")]
