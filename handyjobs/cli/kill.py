"""``handyjobs kill --signal SIG``: send a signal to every process of running jobs, or their
main process."""

from __future__ import annotations

import signal

from handyjobs.cli.args import ALL, GROUP, NAMES
from handyjobs.cli.common import each_name, pick_names
from handyjobs.cli.parse import Command, Parsed
from handyjobs.cli.pause import processes
from handyjobs.core.options import option
from handyjobs.core.states import JobState
from handyjobs.errors import UsageError

#: Signals that would make a job's state wrong if sent behind handyjobs' back.
_BY_PAUSE = {signal.SIGSTOP, signal.SIGCONT, signal.SIGTSTP}


def parse_signal(text: str) -> int:
    """``USR1``, ``SIGUSR1``, ``usr1`` or a number -> the signal's number; a usage error else."""
    raw = text.strip()
    number: int | None = None
    if raw.isdigit():
        number = int(raw) if int(raw) in signal.valid_signals() else None
    else:
        name = raw.upper() if raw.upper().startswith("SIG") else f"SIG{raw.upper()}"
        found = getattr(signal.Signals, name, None) if name.isidentifier() else None
        number = int(found) if isinstance(found, signal.Signals) else None
    if number is None:
        raise UsageError(
            f"--signal {text!r} is not a signal; give a name such as USR1, SIGTERM or a number"
        )
    if number in _BY_PAUSE:
        raise UsageError(
            f"--signal {text}: use `handyjobs pause` and `resume`, so the job's state says so"
        )
    return number


def _name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _run(p: Parsed) -> int:
    # lazy: only this command pays for it, not `--help` or the other commands
    from handyjobs.core import control

    text = p.text("signal")
    if text is None:
        raise UsageError("give the signal to send: --signal USR1 (a name or a number)")
    sig = parse_signal(text)
    active = (JobState.RUNNING, JobState.PAUSED)
    picked = pick_names(p.items("names"), p.text("group"), p.flag("every"), active, "to signal")
    main_only = p.flag("main")

    def one(name: str) -> None:
        result = control.signal_job(name, sig, main_only=main_only)
        if main_only:
            print(f"sent {_name(sig)} to the main process of {name} (pid {result.main})")
        elif result.count is not None:
            print(f"sent {_name(sig)} to {name} ({processes(result.count)})")
        else:  # a cluster's scheduler sent it
            from handyjobs.backends import describe  # lazy: only a scheduler's kill needs it

            said = describe(result.record.current.backend).signalled(result.record, _name(sig))
            print(f"sent {_name(sig)} to {name} ({said or 'done'})")

    return each_name(picked, one)


COMMAND = Command(
    "kill",
    "Send a signal to every process of running jobs (identity checked), or to the main one.\n\n"
    "A Slurm job's signal is sent by Slurm (`scancel --signal`) to every process of its steps. "
    "The job's state is not changed: a job that dies of the signal ends failed. To stop a job, "
    "use `handyjobs stop`; to pause it, `handyjobs pause`.",
    _run,
    args=(NAMES,),
    options=(
        option("--signal", "str", "SIG", "The signal: a name (USR1, SIGTERM) or a number."),
        option(
            "--main",
            "flag",
            "",
            "Only the job's main process (torchrun's agent, or the script), not its workers.",
        ),
        GROUP,
        ALL,
    ),
)
