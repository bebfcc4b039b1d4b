"""``handyjobs release``: let held jobs back into the queue."""

from __future__ import annotations

from handyjobs.cli.args import GROUP, NAMES
from handyjobs.cli.common import each_name, pick_names
from handyjobs.cli.parse import Command, Parsed
from handyjobs.core.states import JobState


def _run(p: Parsed) -> int:
    # lazy: only this command pays for it, not `--help` or the other commands
    from handyjobs.core import queueing
    from handyjobs.views import render

    picked = pick_names(p.items("names"), p.text("group"), False, (JobState.QUEUED,), "to release")

    def one(name: str) -> None:
        record = queueing.release_job(name)
        print(f"released {name}: {render.state_text(record)}")

    return each_name(picked, one)


COMMAND = Command(
    "release",
    "Let held jobs back into the queue: each starts when its turn, GPUs and dependencies allow "
    "(a Slurm job: `scontrol release`).",
    _run,
    args=(NAMES,),
    options=(GROUP,),
)
