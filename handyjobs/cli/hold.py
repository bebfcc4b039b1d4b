"""``handyjobs hold``: keep queued jobs out of the queue until ``release``."""

from __future__ import annotations

from handyjobs.cli.args import GROUP, NAMES
from handyjobs.cli.common import each_name, pick_names
from handyjobs.cli.parse import Command, Parsed
from handyjobs.core.states import JobState


def _run(p: Parsed) -> int:
    # lazy: only this command pays for it, not `--help` or the other commands
    from handyjobs.core import queueing

    picked = pick_names(p.items("names"), p.text("group"), False, (JobState.QUEUED,), "to hold")

    def one(name: str) -> None:
        queueing.hold_job(name)
        print(f"held {name}: it starts only after `handyjobs release {name}`")

    return each_name(picked, one)


COMMAND = Command(
    "hold",
    "Keep queued jobs out of the queue (they never start) until `handyjobs release`; a Slurm "
    "job is held in Slurm's queue (`scontrol uhold`).",
    _run,
    args=(NAMES,),
    options=(GROUP,),
)
