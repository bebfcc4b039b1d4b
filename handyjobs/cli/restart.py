"""``handyjobs restart``: the job's spec again, as a new run, with its first environment."""

from __future__ import annotations

from handyjobs.cli.args import GROUP
from handyjobs.cli.common import each_name, pick_names
from handyjobs.cli.parse import Arg, Command, Parsed
from handyjobs.core.options import STOP_GRACE_S, option
from handyjobs.core.states import JobState
from handyjobs.errors import UsageError


def _run(p: Parsed) -> int:
    # lazy: only this command pays for it, not `--help` or the other commands
    from handyjobs.core import control

    name, args, group = p.text("name"), p.items("args"), p.text("group")
    if p.flag("all_failed"):
        if name is not None or args:
            raise UsageError("--all-failed restarts jobs as they were: give no NAME or arguments")
        names = pick_names(None, group, group is None, (JobState.FAILED,), what="to restart")
    elif name is None:
        raise UsageError("give the NAME of the job to restart (or --all-failed)")
    else:
        names = [name]
    grace = p.real("timeout")
    assert grace is not None

    def one(job: str) -> None:
        result = control.restart_job(job, env=p.items("env"), grace_s=grace, args=args or None)
        record = result.record
        run = record.current
        print(f"restarted {record.name}: run {run.run}, {run.state.value}; log {record.log_path}")
        if not result.env_reused:
            print("  (no environment was kept for this job: it runs with this shell's)")

    return each_name(names, one)


COMMAND = Command(
    "restart",
    "Start a job's spec again as a new run (stopping it first if it runs).",
    _run,
    args=(
        Arg("name", "The job.", complete="jobs"),
        Arg("args", "New arguments for the script (after --).", many=True),
    ),
    options=(
        option("--env", "list", "K=V", "Change one variable: KEY=VALUE (repeatable)."),
        option("--all-failed", "flag", "", "Every failed job (of --group)."),
        GROUP,
        option(
            "--timeout",
            "float",
            "S",
            "Seconds between SIGTERM and SIGKILL if it runs.",
            default=STOP_GRACE_S,
        ),
    ),
    passthrough=True,
)
