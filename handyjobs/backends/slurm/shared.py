"""Whether the state folder can serve a cluster: the job side on each node writes there.

The runner on a compute node writes the job's log, status and outcome into the job's folder,
and Slurm writes its own output file there too: a state folder on a file system of this
machine alone (``/tmp``, a local disk) cannot work unless this machine exports it. ``start``
says so in one line when the folder's file system is a local kind and Slurm's nodes are other
machines; it cannot see an export, so it warns rather than refuses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

#: File system kinds that live on one machine (as ``/proc/self/mountinfo`` names them).
LOCAL_KINDS = frozenset(
    {"tmpfs", "ramfs", "ext2", "ext3", "ext4", "xfs", "btrfs", "overlay", "f2fs", "vfat", "zfs"}
)


def mount_kind(path: Path, mountinfo: str) -> str | None:
    """The file system kind of the mount that holds ``path`` (the longest mount point that is
    a prefix of it), from the text of ``/proc/self/mountinfo``; None when none matches."""
    best, kind = "", None
    target = str(path)
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right:
            continue
        point = fields[4].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, right.split()[0]
    return kind


def folder_kind(path: Path) -> str | None:
    """The file system kind of ``path`` on this machine (None where it cannot be read)."""
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return None
    return mount_kind(path.resolve(), text)


def unshared_note(home: Path, kind: str | None, node_hosts: Iterable[str]) -> str | None:
    """The line ``start`` prints when the state folder is on a local file system and Slurm's
    nodes are other machines; None when it may be shared (or nothing says otherwise)."""
    if kind not in LOCAL_KINDS:
        return None
    me = {os.uname().nodename, os.uname().nodename.split(".")[0], "localhost"}
    others = sorted({h for h in node_hosts if h and h not in me and h.split(".")[0] not in me})
    if not others:
        return None
    more = f" and {len(others) - 1} more" if len(others) > 1 else ""
    return (
        f"the state folder {home} is on {kind}, a file system of this machine, and Slurm's "
        f"nodes ({others[0]}{more}) are other machines: unless this machine shares it with them, "
        "the job cannot write its log and outcome; set HANDYJOBS_HOME to a folder every node "
        "sees (your home or project directory)"
    )


_said = False


def say_if_unshared(
    home: Path, partition: str | None, env: Mapping[str, str] | None, timeout_s: float
) -> None:
    """One line on stderr (once a command) when the state folder is on a file system of this
    machine and the partition's nodes (``sinfo``'s NodeHostname) are other machines."""
    global _said
    kind = folder_kind(home)
    if _said or kind not in LOCAL_KINDS:
        return  # a network file system, or one that cannot be told: nothing to say
    argv = ["sinfo", "-h", "-N", "-o", "%n", *(["-p", partition] if partition else [])]
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return  # Slurm cannot say now: the job's own end will tell
    note = unshared_note(home, kind, proc.stdout.split()) if proc.returncode == 0 else None
    if note:
        _said = True
        sys.stderr.write(f"handyjobs: note: {note}\n")
