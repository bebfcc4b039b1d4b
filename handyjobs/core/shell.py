"""What a shell looks up: a command on PATH and the terminal's width, without importing shutil.

:mod:`shutil` imports ``bz2``, ``lzma`` and ``zlib`` (about 2 ms, a sixth of ``python -c pass``),
and ``start``, ``--help`` and ``list`` on a terminal need only these two of its functions.
Both behave as :func:`shutil.which` and :func:`shutil.get_terminal_size` do on Linux.
"""

from __future__ import annotations

import os
import sys


def which(name: str, path: str | None = None) -> str | None:
    """The command ``name`` as the shell would run it (on ``path``, else ``$PATH``), or None."""
    if os.path.dirname(name):
        return name if _runnable(name) else None
    if path is None:
        path = os.environ.get("PATH")
        if path is None:
            try:
                path = os.confstr("CS_PATH") or os.defpath
            except (AttributeError, ValueError):
                path = os.defpath
    if not path:
        return None
    seen: set[str] = set()
    for folder in path.split(os.pathsep):
        if folder in seen:
            continue
        seen.add(folder)
        candidate = os.path.join(folder, name)
        if _runnable(candidate):
            return candidate
    return None


def terminal_columns(fallback: int = 80) -> int:
    """The terminal's width: ``$COLUMNS``, else the width of the terminal on stdout, else
    ``fallback`` (stdout is no terminal)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else fallback


def _runnable(path: str) -> bool:
    return os.access(path, os.F_OK | os.X_OK) and not os.path.isdir(path)
