"""``handyjobs wait``: block until jobs end; exit with the first failure's code (124 on
--timeout). Each job's verdict is its output (stdout): ``wait x > out`` keeps it."""

from __future__ import annotations

from handyjobs.cli.args import ALL, GROUP, NAMES
from handyjobs.cli.common import pick_names
from handyjobs.cli.parse import Command, Parsed
from handyjobs.core.options import option


def _run(p: Parsed) -> int:
    # lazy: only this command pays for it, not `--help` or the other commands
    from handyjobs.core import jobs
    from handyjobs.core.records import exit_summary, returncode

    picked = pick_names(p.items("names"), p.text("group"), p.flag("every"), (), "to wait for")
    first_failure = 0
    for name, record in jobs.wait_jobs(picked, timeout_s=p.real("timeout")):
        run = record.current
        how = exit_summary(run)
        if how == record.state.value:  # stopped: the word says it all
            print(f"{name}: {how}", flush=True)
        elif how:
            print(f"{name}: {record.state.value} ({how})", flush=True)
        else:  # never started, or lost: say why rather than "no exit code"
            from handyjobs.views import render  # lazy: only these lines need its words

            print(f"{name}: {render.state_text(record)}", flush=True)
        code = returncode(run)
        if code and not first_failure:
            first_failure = code
    return first_failure


COMMAND = Command(
    "wait",
    "Wait for jobs to end; exit 0 when all succeeded, else with the first failure's code.",
    _run,
    args=(NAMES,),
    options=(
        GROUP,
        ALL,
        option("--timeout", "float", "S", "Give up after this many s (exit code 124)."),
    ),
)
