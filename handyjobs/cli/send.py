"""``handyjobs send``: type a line into a running job (a prompt waiting, or pdb)."""

from __future__ import annotations

from handyjobs.cli.args import NAME
from handyjobs.cli.parse import Arg, Command, Parsed
from handyjobs.core import jobs


def _run(p: Parsed) -> None:
    name = p.text("name")
    assert name is not None
    line = " ".join(p.items("text"))
    jobs.send_text(name, line)
    print(f"sent {len(line)} character{'s' if len(line) != 1 else ''} and Enter to {name}")


COMMAND = Command(
    "send",
    "Type TEXT and Enter into a running job's terminal, as if attached.",
    _run,
    args=(
        NAME,
        Arg("text", "The line to type (words joined by spaces).", many=True, required=True),
    ),
)
