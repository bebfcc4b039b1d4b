"""The only module that talks to tmux, always on the configured socket.

It runs the ``tmux`` binary directly rather than through libtmux: each call is one process
(2-7 ms), ``new-session`` takes the runner's argv without a shell, and ``handyjobs list`` does
not pay libtmux's ~50 ms import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

from handyjobs.errors import TmuxError, UsageError

SOCKET_ENV = "HANDYJOBS_TMUX_SOCKET"


class TmuxMissing(UsageError):
    """tmux is not installed."""


def tmux_binary() -> str:
    """The tmux executable, or a clear error saying how to install it."""
    found = shutil.which("tmux")
    if not found:
        raise TmuxMissing(
            "tmux is not installed; install it (e.g. `sudo apt-get install tmux`) and try again"
        )
    return found


def base_argv() -> list[str]:
    """``tmux`` plus the socket option: ``-L NAME``, or ``-S PATH`` when the value is a path."""
    argv = [tmux_binary()]
    sock = os.environ.get(SOCKET_ENV)
    if sock:
        argv += ["-S", sock] if "/" in sock else ["-L", sock]
    return argv


def _run(args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*base_argv(), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if check and proc.returncode != 0:
        msg = proc.stderr.strip() or f"exit code {proc.returncode}"
        raise TmuxError(f"tmux {args[0]} failed: {msg}")
    return proc


def new_session(
    name: str, argv: Sequence[str], cwd: str, width: int = 200, height: int = 50
) -> None:
    """Start a detached session running ``argv`` directly (no shell sees the arguments)."""
    _run(
        [
            "new-session",
            "-d",
            "-s",
            name,
            "-c",
            cwd,
            "-x",
            str(width),
            "-y",
            str(height),
            "--",
            *argv,
        ]
    )


def list_sessions() -> set[str]:
    """Names of the sessions on our socket; empty when no tmux server runs there."""
    if shutil.which("tmux") is None:
        return set()
    proc = _run(["list-sessions", "-F", "#{session_name}"], check=False)
    if proc.returncode != 0:  # "no server running" / "error connecting": no sessions
        return set()
    return {line for line in proc.stdout.splitlines() if line}


def has_session(name: str) -> bool:
    """True when a session of exactly this name exists."""
    return _run(["has-session", "-t", f"={name}"], check=False).returncode == 0


def kill_session(name: str) -> None:
    """Kill a session; no error when it is already gone."""
    _run(["kill-session", "-t", f"={name}"], check=False)


def attach_argv(name: str) -> list[str]:
    """The command that puts the user's terminal into the session.

    Inside tmux on the same server this is ``switch-client``; elsewhere ``attach-session``
    (with ``TMUX`` unset by the caller when it belongs to another server).
    """
    if inside_same_server():
        return [*base_argv(), "switch-client", "-t", f"={name}"]
    return [*base_argv(), "attach-session", "-t", f"={name}"]


def inside_same_server() -> bool:
    """True when this process runs inside a pane of the server on our socket."""
    current = os.environ.get("TMUX", "").split(",")[0]
    if not current:
        return False
    proc = _run(["list-sessions", "-F", "#{socket_path}"], check=False)
    return proc.returncode == 0 and proc.stdout.split("\n")[0].strip() == current
