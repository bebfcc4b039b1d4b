"""``handyjobs resume``: continue every process of paused jobs (SIGCONT)."""

from __future__ import annotations

from handyjobs.cli.args import ALL, GROUP, NAMES
from handyjobs.cli.common import each_name, pick_names
from handyjobs.cli.parse import Command, Parsed
from handyjobs.cli.pause import what_did
from handyjobs.core.states import JobState


def _run(p: Parsed) -> int:
    # lazy: only this command pays for it, not `--help` or the other commands
    from handyjobs.core import control

    picked = pick_names(
        p.items("names"), p.text("group"), p.flag("every"), (JobState.PAUSED,), "to resume"
    )

    def one(name: str) -> None:
        result = control.pause_job(name, paused=False)
        print(f"resumed {name} ({what_did(result, False)})")

    return each_name(picked, one)


COMMAND = Command(
    "resume",
    "Resume paused jobs: every process continues (SIGCONT; `scontrol resume` for a Slurm job); "
    "their group's queue goes on.",
    _run,
    args=(NAMES,),
    options=(GROUP, ALL),
)
