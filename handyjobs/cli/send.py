"""``handyjobs send``: type a line into a running job (a prompt waiting, or pdb)."""

from __future__ import annotations

from typing import Annotated

import typer

from handyjobs.cli.args import NameArg
from handyjobs.core import jobs


def send(
    name: NameArg,
    text: Annotated[list[str], typer.Argument(help="The line to type (words joined by spaces).")],
) -> None:
    """Type TEXT and Enter into a running job's terminal, as if attached."""
    line = " ".join(text)
    jobs.send_text(name, line)
    print(f"sent {len(line)} character{'s' if len(line) != 1 else ''} and Enter to {name}")
