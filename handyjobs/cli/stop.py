"""``handyjobs stop``: end every process of each job named; go on past a failure."""

from __future__ import annotations

from handyjobs.cli.args import ALL, GROUP, NAMES
from handyjobs.cli.common import each_name, pick_names
from handyjobs.cli.parse import Command, Parsed
from handyjobs.core.options import STOP_GRACE_S, option
from handyjobs.core.states import JobState


def _run(p: Parsed) -> int:
    # lazy: only this command pays for it, not `--help` or the other commands
    from handyjobs import backends
    from handyjobs.core import control

    active = (JobState.QUEUED, JobState.RUNNING, JobState.PAUSED)
    picked = pick_names(p.items("names"), p.text("group"), p.flag("every"), active, "to stop")
    grace = p.real("timeout")
    assert grace is not None
    # All marked first: a queued job that waits for another one named here ends stopped too.
    asked = control.ask_to_stop(picked) if len(picked) > 1 else {}
    if len(picked) > 1:  # a cluster's jobs all cancelled in one call, then waited for
        asked.update(control.cancel_together(picked))

    def one(name: str) -> None:
        result = control.stop_job(name, grace_s=grace, asked=asked.get(name))
        n, k = len(result.pids), len(result.killed)
        ended = f"{n} process{'' if n == 1 else 'es'} ended"
        if k:  # it ignored SIGTERM: say so, that is why the stop took the whole grace
            which = "" if k == n else f"{k} of them "
            ended += f", {which}by SIGKILL after {grace:g}s: SIGTERM did not end it"
        if result.was_lost:
            print(f"job {name} was lost; ended what was left of it ({ended})")
        else:
            what = "queued job" if result.was_queued else "job"
            cancelled = backends.describe(result.record.current.backend).cancelled(result.record)
            if cancelled and not result.pids:  # on a cluster: its scheduler ended them
                ended = cancelled
            print(f"stopped {what} {name} ({ended})")
        if result.gpu_note:
            print(f"  note: {result.gpu_note}")

    return each_name(picked, one)


COMMAND = Command(
    "stop",
    "Stop jobs: every process gone (torchrun workers too), GPUs released.",
    _run,
    args=(NAMES,),
    options=(
        GROUP,
        ALL,
        option(
            "--timeout",
            "float",
            "S",
            "Seconds between SIGTERM and SIGKILL.",
            default=STOP_GRACE_S,
        ),
    ),
)
