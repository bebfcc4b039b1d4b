"""``handyjobs send``: type a line into a running job (a prompt waiting, or pdb)."""

from __future__ import annotations

from handyjobs.cli.args import NAME
from handyjobs.cli.parse import Arg, Command, Parsed
from handyjobs.core.options import option
from handyjobs.errors import UsageError

#: What a terminal acts on instead of typing it: C0 (Ctrl-C is 0x03: SIGINT to the job), DEL
#: and C1. A tab is typed as it is.
_CONTROL = {*range(0x20), 0x7F, *range(0x80, 0xA0)} - {0x09}


def check_text(line: str) -> None:
    """Refuse a control character in the text: the job's terminal would act on it (Ctrl-C
    interrupts the job, Ctrl-D ends its input), which ``send`` does only with ``--raw``."""
    for i, char in enumerate(line, 1):
        if ord(char) in _CONTROL:
            raise UsageError(
                f"the text has a control character ({ascii(char)[1:-1]}, character {i}) that the "
                "job's terminal would act on (\\x03 interrupts the job); add --raw to send it"
            )


def _run(p: Parsed) -> None:
    # lazy: only this command pays for it, not `--help` or the other commands
    from handyjobs.core import jobs

    name = p.text("name")
    assert name is not None
    line = " ".join(p.items("text"))
    if not p.flag("raw"):
        check_text(line)
    jobs.send_text(name, line)
    print(f"sent {len(line)} character{'s' if len(line) != 1 else ''} and Enter to {name}")


COMMAND = Command(
    "send",
    """Type TEXT and Enter into a running job's terminal, as if attached.

    Text that starts with - goes after --: `handyjobs send NAME -- -x`. A control character
    (Ctrl-C, Ctrl-D, an escape) is refused unless --raw: the terminal would act on it.
    """,
    _run,
    args=(
        NAME,
        Arg("text", "The line to type (words joined by spaces).", many=True, required=True),
    ),
    options=(
        option("--raw", "flag", "", "Send control characters too (\\x03 interrupts the job)."),
    ),
)
