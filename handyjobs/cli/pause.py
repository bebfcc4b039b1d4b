"""``handyjobs pause``: stop every process of running jobs (SIGSTOP) until ``resume``."""

from __future__ import annotations

from handyjobs.cli.args import ALL, GROUP, NAMES
from handyjobs.cli.common import each_name, pick_names
from handyjobs.cli.parse import Command, Parsed
from handyjobs.core.states import JobState

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from handyjobs.core.control import Signalled


def processes(n: int) -> str:
    """``1 process``, ``3 processes``."""
    return f"{n} process{'' if n == 1 else 'es'}"


def what_did(result: Signalled, paused: bool) -> str:
    """``2 processes stopped``, or the backend's words when its scheduler did it."""
    if result.count is not None:
        return f"{processes(result.count)} {'stopped' if paused else 'continued'}"
    from handyjobs.backends import describe  # lazy: only a pause that worked is put in words

    return describe(result.record.current.backend).paused(result.record, paused) or "done"


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
        print(f"paused {name} ({what_did(result, True)}): {said}")

    return each_name(picked, one)


COMMAND = Command(
    "pause",
    "Pause running jobs: every process stopped (SIGSTOP; a Slurm job is suspended, `scontrol "
    "suspend`) until `handyjobs resume`.\n\n"
    "A paused job keeps its GPUs booked, and its group starts no queued job until it is "
    "resumed; `handyjobs stop` still ends it.",
    _run,
    args=(NAMES,),
    options=(GROUP, ALL),
)
