"""``handyjobs stop``: end every process of each job named; go on past a failure."""

from __future__ import annotations

from typing import Annotated

import typer

from handyjobs.cli.args import AllOpt, GroupOpt, NamesArg
from handyjobs.cli.common import each_name, pick_names
from handyjobs.core import jobs
from handyjobs.core.records import JobState


def stop(
    names: NamesArg = None,
    group: GroupOpt = None,
    every: AllOpt = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds between SIGTERM and SIGKILL.")
    ] = jobs.DEFAULT_GRACE_S,
) -> None:
    """Stop jobs: every process gone (torchrun workers too), GPUs released."""
    active = (JobState.QUEUED, JobState.RUNNING)
    picked = pick_names(names, group, every, active, what="to stop")

    def one(name: str) -> None:
        result = jobs.stop_job(name, grace_s=timeout)
        n = len(result.pids)
        ended = f"{n} process{'' if n == 1 else 'es'} ended"
        if result.was_lost:
            print(f"job {name} was lost; ended what was left of it ({ended})")
        else:
            what = "queued job" if result.was_queued else "job"
            job_id = result.record.current.handle.get("job_id")
            if job_id and not result.pids:  # on a cluster: Slurm ended its processes
                ended = f"Slurm job {job_id} cancelled"
            print(f"stopped {what} {name} ({ended})")
        if result.gpu_note:
            print(f"  note: {result.gpu_note}")

    raise typer.Exit(each_name(picked, one))
