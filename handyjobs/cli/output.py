"""Errors and broken pipes as the CLI shows them: one line on stderr, nothing on a closed pipe."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from typing import NoReturn


def quiet_stdout() -> None:
    """Point stdout at /dev/null so Python's flush at exit does not raise on a closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def error_line(message: str) -> None:
    """One error line on stderr, control characters escaped."""
    from handyjobs.views.render import printable  # lazy: only on an error

    print(f"handyjobs: error: {printable(message)}", file=sys.stderr)


def fail(message: str, code: int) -> NoReturn:
    """Print one error line and exit with ``code``."""
    error_line(message)
    sys.exit(code)
