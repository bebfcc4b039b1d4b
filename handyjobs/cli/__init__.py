"""The ``handyjobs`` command: parse, call the core (:mod:`handyjobs.core.jobs`) once, render.

This is the one place where errors become exit codes: 0 success, 1 an operation failed,
2 bad usage or bad input, 124 ``wait --timeout`` ran out; ``wait`` and ``logs -f`` exit with
the job's own code. Every error is one line on stderr.

Typer is imported only when a command needs it: ``handyjobs list`` (the command people run
all day, often in ``watch``) is parsed by hand, because Typer's start-up (it builds a
pydantic adapter per option) alone costs several times Python's own start-up. One file per
command sits beside this one; :mod:`handyjobs.cli.app` assembles them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from handyjobs.errors import HandyjobsError

SHORT_HELP = """\
usage: handyjobs COMMAND [ARGS]...

  start SCRIPT [ARGS]   start a job in its own tmux session (torchrun for several processes)
  list                  what runs where, since when, how it ended
  show NAME             everything on a job's record
  attach NAME           put this terminal into a job's session
  logs NAME [-f]        a job's output; -f follows it to the end (--rank N: one rank's)
  stop NAME...          end every process of jobs
  restart NAME          run a job's spec again
  wait NAME             wait for a job; exit with its code
  rm NAME...            forget finished jobs
  clean                 forget every finished job
  gpus                  GPUs, their use, and which job holds each
  sweep SCRIPT --grid   one queued job per point of a grid of values
  send NAME TEXT        type a line into a running job
  config [KEY [VALUE]]  defaults: parallel limit, GPUs, on-exit command
  completion SHELL      shell completion script (bash, zsh, fish)
  top                   a live view: jobs, CPU, memory, GPUs, progress (q quits)
  plot NAME...          a metric's curves in the terminal (--metric loss, --png FILE)

`handyjobs COMMAND --help` says more about each command."""


def _fast_list(args: Sequence[str]) -> dict[str, Any] | None:
    """Parse ``list`` options by hand; None when anything else (``--help``) is asked."""
    if not args or args[0] != "list":
        return None
    out: dict[str, Any] = {"all_jobs": False, "states": [], "as_json": False, "group": None}
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
        elif arg == "--group" and rest:
            out["group"] = rest.pop(0)
        elif arg.startswith("--group="):
            out["group"] = arg.split("=", 1)[1]
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
        if os.environ.get("_HANDYJOBS_COMPLETE"):
            from handyjobs.cli import app

            app.complete()  # the shell asks for completions: answer and exit
        elif args in (["--version"], ["-V"]):
            from handyjobs import __version__

            print(f"handyjobs {__version__}")
        elif not args:
            print(SHORT_HELP)
        elif fast is not None:
            from handyjobs.cli.common import do_list

            do_list(**fast)
        else:
            from handyjobs.cli import app

            code = app.run(args)
    except HandyjobsError as exc:
        from handyjobs.views.render import error_text  # only on an error: list stays lean

        fail(error_text(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except BrokenPipeError:
        quiet_stdout()
        sys.exit(0)
    except OSError as exc:
        # Storage is wrapped in StorageError; anything else the system refused is still one line.
        where = f" {exc.filename}" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where}; check that path and try again", 1)
    except Exception as exc:
        # click's usage errors (whichever copy of click typer uses): one line, exit code 2.
        fmt = getattr(exc, "format_message", None)
        if fmt is None:
            raise
        if type(exc).__name__ == "Abort":
            fail("aborted", 130)
        ctx = getattr(exc, "ctx", None)
        where = f"handyjobs {ctx.info_name} --help" if ctx and ctx.parent else "handyjobs --help"
        fail(f"{fmt()} (see `{where}`)", int(getattr(exc, "exit_code", 2)))
    sys.exit(code if isinstance(code, int) else 0)


def quiet_stdout() -> None:
    """Point stdout at /dev/null so Python's flush at exit does not raise on a closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def error_line(message: str) -> None:
    """One error line on stderr, control characters escaped."""
    from handyjobs.views.render import printable

    print(f"handyjobs: error: {printable(message)}", file=sys.stderr)


def fail(message: str, code: int) -> NoReturn:
    """Print one error line and exit with ``code``."""
    error_line(message)
    sys.exit(code)
