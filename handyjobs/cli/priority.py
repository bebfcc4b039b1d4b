"""``handyjobs priority``: move a queued job in the queue (its ``--priority``)."""

from __future__ import annotations

from handyjobs.cli.args import NAME
from handyjobs.cli.parse import Arg, Command, Parsed
from handyjobs.errors import UsageError


def _run(p: Parsed) -> int:
    # lazy: only this command pays for it, not `--help` or the other commands
    from handyjobs.core import queueing
    from handyjobs.views import render

    name, value = p.text("name"), p.text("priority")
    assert name is not None and value is not None
    try:
        priority = int(value)
    except ValueError:
        raise UsageError(f"priority {value!r} is not a whole number (higher goes first)") from None
    record = queueing.set_priority(name, priority)
    wait = record.current.wait
    place = f"#{wait.position} in the queue, " if wait and wait.position else ""
    print(f"{name}: priority {priority}; {place}{render.state_text(record)}")
    return 0


COMMAND = Command(
    "priority",
    "Move a queued job: its new priority (higher goes first; FIFO among equals).",
    _run,
    args=(NAME, Arg("priority", "The new priority, a whole number.", required=True)),
)
