"""The ``handyjobs`` command: parse, call the core (:mod:`handyjobs.core.jobs`) once, render.

This is the one place where errors become exit codes: 0 success, 1 an operation failed,
2 bad usage or bad input, 124 ``wait --timeout`` ran out; ``wait`` and ``logs -f`` exit with
the job's own code. Every error is one line on stderr.

One file per command sits beside this one, each declaring its arguments and options as data
(:class:`handyjobs.cli.parse.Command`) and the function that runs it. Only the command asked
for is imported, and :mod:`handyjobs.cli.parse` reads its command line; Typer is imported only
for shell completion (:mod:`handyjobs.cli.app`), because its start-up (a pydantic adapter per
option per call) costs several times Python's own.
"""

from __future__ import annotations

import gc
import os
import sys

from handyjobs.cli import parse
from handyjobs.cli.commands import COMPLETE_VAR, command
from handyjobs.cli.output import fail, quiet_stdout
from handyjobs.core import shell
from handyjobs.errors import HandyjobsError

#: Typer's own options: it answers them (as it answers the shell's completion requests).
_TYPER_OPTIONS = ("--install-completion", "--show-completion")


def run(args: list[str]) -> int | None:
    """Run the command line ``args`` (what follows ``handyjobs``); its exit code."""
    if os.environ.get(COMPLETE_VAR) or (args and args[0] in _TYPER_OPTIONS):
        from handyjobs.cli import app  # lazy: Typer's start-up is paid for completion only

        app.complete(args)  # answers and exits
    if not args:
        from handyjobs.cli.commands import COMMANDS  # lazy: only the bare command lists them

        print(parse.short_text(list(COMMANDS)), end="")
        return 0
    if args[0] == "--help":
        print(_overview(), end="")
        return 0
    if args in (["--version"], ["-V"]):
        from handyjobs import __version__  # lazy: the package's root is not the CLI's to load

        print(f"handyjobs {__version__}")
        return 0
    cmd = command(args[0])
    parsed = parse.parse(cmd, args[1:])
    if parsed.help:
        print(parse.help_text(cmd, min(shell.terminal_columns(), 100)), end="")
        return 0
    return cmd.run(parsed)


def _overview() -> str:
    """``handyjobs --help`` from each command's own declaration (every module imported)."""
    from handyjobs.cli.commands import COMMANDS  # lazy: only the overview lists them all

    width = min(shell.terminal_columns(), 100)
    return parse.overview_text([command(name) for name in COMMANDS], width)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the command, turning expected errors into one line and a code."""
    gc.disable()  # a short-lived CLI: the collector only slows down parsing a big registry
    code: int | None = 0
    try:
        code = run(sys.argv[1:] if argv is None else argv)
    except HandyjobsError as exc:
        from handyjobs.views.render import error_text  # lazy: only on an error

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
    sys.exit(code or 0)
