"""One folder per backend, both halves: how the core reaches a run, and the job side.

A backend is found by name, as a plugin is: ``handyjobs/backends/NAME/`` holds ``backend.py``
(``BACKEND``, the core's half), ``jobside.py`` (``JobSide``, what the runner does there) and
``describe.py`` (``DESCRIBE``, its own words for the views). This package itself stays light:
``list`` asks a backend for its words without loading any backend's machinery.
"""

from __future__ import annotations

import sys
from types import ModuleType

from handyjobs.errors import UsageError

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from handyjobs.backends.base import Describe

#: The backends this handyjobs has.
KNOWN = ("tmux", "slurm")


def module(name: str, part: str) -> ModuleType:
    """``handyjobs.backends.NAME.PART``; a usage error for a backend this handyjobs lacks."""
    if name not in KNOWN:
        raise UsageError(f"unknown backend {name!r}; this handyjobs knows: {', '.join(KNOWN)}")
    # Looked up by name: the core names no backend, and a backend's module (which imports
    # the core) is loaded only by the commands that reach it.
    # __import__ rather than importlib.import_module: the importlib package (with warnings) is
    # an import of its own on every command's path.
    full = f"handyjobs.backends.{name}.{part}"
    __import__(full)
    return sys.modules[full]


def describe(name: str) -> Describe:
    """The views' part of the backend of that name."""
    found: Describe = module(name, "describe").DESCRIBE
    return found
