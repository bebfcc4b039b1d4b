"""The ``handyjobs`` command: parse, call one function of :mod:`handyjobs.jobs`, render.

This is the one place where errors become exit codes: 0 success, 1 an operation failed,
2 bad usage or bad input; ``wait`` exits with the job's own code.

Typer is imported only when a command needs it: ``handyjobs list`` (the command people run
all day, often in ``watch``) is parsed by hand, because Typer's start-up (it builds a
pydantic adapter per option) alone costs several times Python's own start-up.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from handyjobs import jobs
from handyjobs.errors import HandyjobsError, UsageError
from handyjobs.records import JobState


def parse_states(values: Sequence[str] | None) -> list[JobState]:
    """``--state failed,lost`` (repeatable) -> states; a bad name is a usage error."""
    out = []
    for value in values or []:
        for item in value.split(","):
            try:
                out.append(JobState(item.strip()))
            except ValueError:
                names = ", ".join(s.value for s in JobState)
                raise UsageError(f"--state {item!r} is not a state; use one of {names}") from None
    return out


def dump_json(doc: object) -> None:
    # json.dumps once and one write: json.dump's many small writes are slow on big documents
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


# ---- the commands, shared by the Typer app and the fast path ---------------------------------


def do_list(all_jobs: bool, states: Sequence[str] | None, as_json: bool) -> None:
    """``handyjobs list``."""
    records, total = jobs.list_jobs(all_jobs=all_jobs, states=parse_states(states))
    if as_json:
        dump_json([r.to_dict() for r in records])
        return
    from handyjobs import render

    render.print_jobs(records, total, all_jobs or bool(states))


def do_start(req: jobs.StartRequest, attach: bool, follow: bool) -> int:
    """``handyjobs start``; returns the exit code (the job's with ``--follow``)."""
    from handyjobs.records import returncode

    record = jobs.start_job(req)
    run = record.current
    where = (
        f"GPUs {','.join(map(str, run.gpus))}"
        if run.gpus
        else "CPU"
        if record.spec.cpu
        else "the caller's devices"
    )
    if run.state is JobState.QUEUED:
        print(f"queued {record.name} (tmux session {record.session}): {run.waiting_for}")
    else:
        procs = f"{run.nproc} process{'es' if run.nproc > 1 else ''}"
        print(f"started {record.name} in tmux session {record.session} on {where}, {procs}")
    print(f"  log:    {record.log_path}")
    print(f"  attach: handyjobs attach {record.name}    follow: handyjobs logs {record.name} -f")
    sys.stdout.flush()
    if attach:
        exec_attach(record.name)
    if follow:
        do_logs(record.name, None, True)
        return returncode(jobs.get_job(record.name).current)
    return 0


def do_logs(name: str, lines: int | None, follow: bool) -> None:
    """``handyjobs logs``: the log (or its last lines), then new bytes until the job ends."""
    from handyjobs import logs as logmod

    if lines is not None and lines < 0:
        raise UsageError(f"-n {lines}: give 0 or more lines")
    record = jobs.get_job(name)
    data, end = logmod.tail(record.log_path, lines if lines is not None else 1 << 62)
    out = sys.stdout.buffer
    try:
        out.write(data)
        out.flush()
    except BrokenPipeError:  # `handyjobs logs x | head`
        _quiet_stdout()
        return
    if follow and record.state.active:
        logmod.follow(record.log_path, out.fileno(), jobs.ended_check(record), start_offset=end)


def exec_attach(name: str) -> NoReturn:
    """Replace this process with ``tmux attach`` (or ``switch-client`` inside our tmux)."""
    argv = jobs.attach_argv(name)
    env = dict(os.environ)
    if "switch-client" not in argv:
        env.pop("TMUX", None)  # nesting into our server from another tmux is deliberate
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)


# ---- entry point -----------------------------------------------------------------------------


def _fast_list(args: Sequence[str]) -> dict[str, Any] | None:
    """Parse ``list`` options by hand; None when anything else (``--help``) is asked."""
    if not args or args[0] != "list":
        return None
    out: dict[str, Any] = {"all_jobs": False, "states": [], "as_json": False}
    rest = list(args[1:])
    while rest:
        arg = rest.pop(0)
        if arg in ("--all", "-a"):
            out["all_jobs"] = True
        elif arg == "--json":
            out["as_json"] = True
        elif arg == "--state" and rest:
            out["states"].append(rest.pop(0))
        elif arg.startswith("--state="):
            out["states"].append(arg.split("=", 1)[1])
        else:
            return None
    return out


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the command, turning expected errors into one line and a code."""
    import gc

    gc.disable()  # a short-lived CLI: the collector only slows down parsing a big registry
    args = sys.argv[1:] if argv is None else argv
    code: object = 0
    try:
        fast = _fast_list(args)
        if fast is not None:
            do_list(**fast)
        else:
            from handyjobs import cli_app

            code = cli_app.run(args)
    except HandyjobsError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BrokenPipeError:
        _quiet_stdout()
        sys.exit(0)
    except Exception as exc:
        # click's usage errors (whichever copy of click typer uses): one line, exit code 2.
        fmt = getattr(exc, "format_message", None)
        if fmt is None:
            raise
        if type(exc).__name__ == "Abort":
            _fail("aborted", 130)
        ctx = getattr(exc, "ctx", None)
        where = f"handyjobs {ctx.info_name} --help" if ctx and ctx.parent else "handyjobs --help"
        _fail(f"{fmt()} (see `{where}`)", int(getattr(exc, "exit_code", 2)))
    sys.exit(code if isinstance(code, int) else 0)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so Python's flush at exit does not raise on a closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _fail(message: str, code: int) -> NoReturn:
    print(f"handyjobs: error: {message}", file=sys.stderr)
    sys.exit(code)
