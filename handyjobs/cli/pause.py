"""``handyjobs pause``: stop every process of running jobs (SIGSTOP) until ``resume``."""

from __future__ import annotations

from handyjobs.cli.args import ALL, GROUP, NAMES
from handyjobs.cli.common import each_name, pick_names
from handyjobs.cli.parse import Command, Parsed
from handyjobs.core.states import JobState


def processes(n: int) -> str:
    """``1 process``, ``3 processes``."""
    return f"{n} process{'' if n == 1 else 'es'}"


def _run(p: Parsed) -> int:
    # lazy: only this command pays for it, not `--help` or the other commands
    from handyjobs.core import control

    picked = pick_names(
        p.items("names"), p.text("group"), p.flag("every"), (JobState.RUNNING,), "to pause"
    )

    def one(name: str) -> None:
        from handyjobs.views import render  # lazy: only a pause that worked is put in words

        result = control.pause_job(name)
        said = render.paused_text(result.record.current.gpus)
        print(f"paused {name} ({processes(result.count)} stopped): {said}")

    return each_name(picked, one)


COMMAND = Command(
    "pause",
    "Pause running jobs: every process stopped (SIGSTOP) until `handyjobs resume`.\n\n"
    "A paused job keeps its GPUs booked, and its group starts no queued job until it is "
    "resumed; `handyjobs stop` still ends it.",
    _run,
    args=(NAMES,),
    options=(GROUP, ALL),
)
