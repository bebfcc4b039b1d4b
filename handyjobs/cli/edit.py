"""``handyjobs edit``: change a queued (or held) job before it starts."""

from __future__ import annotations

from handyjobs.cli.args import NAME
from handyjobs.cli.parse import Arg, Command, Parsed
from handyjobs.core.options import EDIT_OPTIONS, START_OPTIONS


def _run(p: Parsed) -> int:
    # lazy: only this command pays for it, not `--help` or the other commands
    from handyjobs.core import queueing
    from handyjobs.views import render

    name = p.text("name")
    assert name is not None
    args = p.items("args") if p.dashdash or p.items("args") else None
    record = queueing.edit_job(name, p.typed, args)
    print(f"edited {name}: {render.printable(record.spec.command)}; {render.state_text(record)}")
    return 0


COMMAND = Command(
    "edit",
    """Change a queued or held job before it starts: its arguments (after --), --env, GPUs,
    priority, dependencies. Refused once the job runs.

    --env adds or replaces variables; --gpus, --ngpus, --priority and --after replace what the
    job asked for; `-- ARGS` replaces the script's arguments (`--` alone: none).""",
    _run,
    args=(NAME, Arg("args", "New arguments for the script (after --).", many=True)),
    # The same options as `start`, declared once there.
    options=tuple(o for o in START_OPTIONS if o.name in EDIT_OPTIONS),
)
