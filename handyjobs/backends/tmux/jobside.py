"""The tmux backend's job side: the runner in a pane of this machine, the job on its terminal.

Here handyjobs' own queue grants the run, the pane is the job's terminal (echo and input pass
through), SIGTERM and SIGHUP end the runner (handled by the runner itself: the job is ended
and the run recorded ``lost`` unless a stop was asked for), and nothing is requeued.
"""

from __future__ import annotations

from collections.abc import Mapping

from handyjobs.backends.base import JobControl
from handyjobs.core.records import Cost, JobSpec, Reason
from handyjobs.jobside import launch


class JobSide:
    """The runner's tmux half: the defaults every other backend's job side departs from."""

    scheduled = False
    interactive = True
    ended_by_scheduler = False

    def take_signals(self, control: JobControl) -> None:
        """Nothing to add: the runner's own SIGHUP/SIGTERM handling is this backend's."""

    def ended_before_start(self) -> str | None:
        """Never: only handyjobs' own queue or ``stop`` keeps a run from starting here."""
        return None

    def where(self, env: Mapping[str, str]) -> str:
        """Nothing to add to the GPUs or CPU the header already names."""
        return ""

    def attempt(self, env: Mapping[str, str]) -> int:
        """Never requeued here: every run starts once."""
        return 0

    def command(
        self,
        spec: JobSpec,
        ctx: launch.RunContext,
        base_env: Mapping[str, str],
        pane_env: Mapping[str, str],
    ) -> launch.Launch:
        """The job as :func:`handyjobs.jobside.launch.build` starts it on this machine."""
        return launch.build(spec, ctx, base_env, pane_env=pane_env)

    def job_ended(self) -> list[str]:
        """Nothing repeats here."""
        return []

    def stop_reason(self, exit_code: int | None) -> Reason | None:
        """The runner's own watch says when a limit ended the job here."""
        return None

    def goes_on(self, spec: JobSpec, exit_code: int | None) -> bool:
        """Never requeued: an ended job here has ended."""
        return False

    def cost(self, measured: Cost) -> Cost:
        """Every process of the job runs on this machine: the runner's measure is the cost."""
        return measured
