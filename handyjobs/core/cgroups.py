"""A run is a cgroup: every process of the run is found by containment, not by a variable.

The runner makes one cgroup per run and its job joins it before exec, so whatever the job
starts (a child with a scrubbed environment, a process that rewrites its title) is a member
until it ends. ``stop``, ``pause`` and the runner's sweep at the end of a run act on the
members; a run that got no cgroup falls back to the ``HANDYJOBS_RUN_ID`` marker, and ``show``
says which one a run uses.

Where the cgroup comes from, in order:

- **cgroup v2** (the unified hierarchy, at ``/sys/fs/cgroup`` on systemd machines): a folder
  ``handyjobs/run-RUNID`` under the nearest writable cgroup (root, or a delegated subtree such as
  systemd's ``user@UID.service``). Membership, ``cgroup.kill`` and the freezer need no
  controller; ``memory.max`` needs the memory controller enabled for the subtree.
- **cgroup v1** controllers (``memory``, ``freezer``, ``pids``), writable as root on machines
  without systemd as init: one folder per controller, the same relative path.

A machine may have both (v2 mounted at ``/sys/fs/cgroup/unified`` with no controllers, the
controllers on v1): membership then comes from v2 and the memory limit from v1.

Runs are siblings under one ``handyjobs`` folder, found by cutting the runner's own cgroup
path at its first ``handyjobs`` part, so a runner started from inside another job (a nested
``handyjobs start``) does not land inside that job's cgroup; the tmux servers handyjobs starts
are moved to ``handyjobs/servers`` for the same reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

from handyjobs.errors import UsageError
from handyjobs.structs import field, frozen

#: Overrides where cgroups are looked for (tests; a site with its own delegated subtree).
ROOT_ENV = "HANDYJOBS_CGROUP_ROOT"
#: Set to ``0`` to run without cgroups (the marker only), e.g. to compare.
USE_ENV = "HANDYJOBS_CGROUPS"
#: The folder under which every run's cgroup is made.
BASE = "handyjobs"
#: The folder for the tmux servers handyjobs starts: never a job's.
SERVERS = "servers"
#: The v1 controllers a run's cgroup is made in, when they are mounted and writable.
V1_CONTROLLERS = ("memory", "freezer", "pids")
#: Why ``--mem`` is refused where no run's cgroup can take a memory limit.
NO_MEMORY_LIMIT = (
    "--mem needs a cgroup with the memory controller: none is writable here (cgroup v2 with "
    "memory delegated, e.g. under `systemd-run --user --scope`, or cgroup v1 as root); run "
    "without --mem"
)


@frozen
class Hierarchy:
    """One mounted hierarchy: v2 (``controller`` is "") or one v1 controller."""

    mount: Path
    controller: str
    #: This process's cgroup in it, relative to the mount ("/" for the root).
    own: str

    @property
    def base(self) -> Path:
        """The ``handyjobs`` folder every run's cgroup sits in."""
        parts = [p for p in self.own.split("/") if p]
        if BASE in parts:
            parts = parts[: parts.index(BASE)]
        return self.mount.joinpath(*parts, BASE)


@frozen
class RunGroup:
    """The cgroup folders of one run (one per hierarchy), and what they can do."""

    run_id: str
    dirs: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def kind(self) -> str:
        """How the run's processes are found: ``cgroup v2``, ``cgroup v1`` or ``marker``."""
        if not self.dirs:
            return "marker"
        return "cgroup v2" if any(_is_v2(d) for d in self.dirs) else "cgroup v1"

    @property
    def procs_files(self) -> tuple[str, ...]:
        """The ``cgroup.procs`` files a process writes ``0`` into to join the run."""
        return tuple(str(d / "cgroup.procs") for d in self.dirs)

    def members(self) -> set[int]:
        """Every process in the run's cgroup now (any hierarchy; they agree once joined)."""
        found: set[int] = set()
        for d in self.dirs:
            found |= _read_pids(d / "cgroup.procs")
        return found

    def contains(self, pid: int) -> bool:
        """True when ``pid`` is in the run's cgroup (read from the process's own side)."""
        try:
            text = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return False
        mine = {_relative(d) for d in self.dirs}
        return any(line.split(":", 2)[-1] in mine for line in text.splitlines())

    def memory_limited(self) -> bool:
        """True when a memory limit is set on the run's cgroup."""
        return any(_limit_file(d) is not None for d in self.dirs)

    def oom_killed(self) -> int:
        """How many processes the kernel killed for going over the run's memory limit."""
        total = 0
        for d in self.dirs:
            for name, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
                with contextlib.suppress(OSError, ValueError):
                    for line in (d / name).read_text().splitlines():
                        k, _, v = line.partition(" ")
                        if k == key:
                            total += int(v)
        return total

    def remove(self, wait_s: float = 2.0) -> bool:
        """Remove the run's folders once empty; False when a member is still there."""
        deadline = time.monotonic() + wait_s
        while self.members() and time.monotonic() < deadline:
            time.sleep(0.02)  # the last members are being reaped
        ok = True
        for d in self.dirs:
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                ok = False
        return ok


def _is_v2(d: Path) -> bool:
    return (d / "cgroup.controllers").exists() or (d / "cgroup.kill").exists()


def _relative(d: Path) -> str:
    """The path of a cgroup folder as /proc/PID/cgroup writes it (relative to its mount)."""
    for h in hierarchies():
        with contextlib.suppress(ValueError):
            return "/" + str(d.relative_to(h.mount))
    return str(d)


def _read_pids(path: Path) -> set[int]:
    try:
        return {int(p) for p in path.read_text().split()}
    except (OSError, ValueError):
        return set()


def _limit_file(d: Path) -> Path | None:
    for name, unlimited in (("memory.max", "max"), ("memory.limit_in_bytes", None)):
        path = d / name
        with contextlib.suppress(OSError, ValueError):
            text = path.read_text().strip()
            if text == unlimited or (unlimited is None and int(text) >= 1 << 62):
                continue
            return path
    return None


def hierarchies() -> list[Hierarchy]:
    """The cgroup hierarchies mounted here that handyjobs can use, v2 first."""
    root = os.environ.get(ROOT_ENV)
    own = _own_paths()
    found: list[Hierarchy] = []
    for mount, fstype, options in _mounts():
        if root and not str(mount).startswith(root):
            continue
        if fstype == "cgroup2":
            found.append(Hierarchy(mount, "", own.get("", "/")))
        elif fstype == "cgroup":
            for ctl in V1_CONTROLLERS:
                if ctl in options.split(","):
                    found.append(Hierarchy(mount, ctl, own.get(ctl, "/")))
    return sorted(found, key=lambda h: h.controller != "")


def _mounts() -> Iterator[tuple[Path, str, str]]:
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        parts = line.split()
        if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
            yield Path(parts[1]), parts[2], parts[3]


def _own_paths() -> dict[str, str]:
    """This process's cgroup per v1 controller, and "" for v2."""
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctls, path = line.split(":", 2)
            for ctl in ctls.split(",") if ctls else [""]:
                out[ctl] = path
    return out


def parse_memory(text: str) -> int:
    """``16G``, ``512M``, ``1.5G``, ``1000000`` -> bytes; a usage error for anything else."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = raw[-1:] if raw[-1:] in units else ""
    try:
        value = float(raw[: len(raw) - len(unit)] if unit else raw)
    except ValueError:
        value = -1
    if not value > 0 or value * units[unit] < 1 << 20:
        raise UsageError(f"--mem {text!r}: give a size of at least 1M, e.g. 512M or 16G")
    return int(value * units[unit])


def create(run_id: str, mem_bytes: int | None = None) -> RunGroup:
    """Make the run's cgroup where the machine allows it; an empty group means the marker.

    With ``mem_bytes`` the limit must be set somewhere, or this raises a usage error: a limit
    is never silently dropped.
    """
    if os.environ.get(USE_ENV) == "0":
        group = RunGroup(run_id)
    else:
        group = RunGroup(run_id, tuple(_make_dirs(run_id)))
    if mem_bytes is not None and not _set_memory(group, mem_bytes):
        group.remove(0)
        raise UsageError(NO_MEMORY_LIMIT)
    return group


def can_limit_memory() -> bool:
    """True when a run's cgroup here can take a memory limit: ``start --mem`` asks first.

    A probe cgroup is made where a run's would be, limited, and removed again; with
    ``HANDYJOBS_CGROUPS=0`` there is none, as in the runner.
    """
    if os.environ.get(USE_ENV) == "0":
        return False
    probe = RunGroup(f"probe-{os.getpid()}")
    probe = RunGroup(probe.run_id, tuple(_make_dirs(probe.run_id)))
    try:
        return _set_memory(probe, 1 << 30)
    finally:
        probe.remove(0)


def _make_dirs(run_id: str) -> Iterator[Path]:
    v2_done = False
    for h in hierarchies():
        if h.controller == "" and v2_done:
            continue
        d = h.base / f"run-{run_id}"
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if not os.access(d / "cgroup.procs", os.W_OK):
            with contextlib.suppress(OSError):
                d.rmdir()
            continue
        v2_done = v2_done or h.controller == ""
        yield d


def _set_memory(group: RunGroup, limit: int) -> bool:
    done = False
    for d in group.dirs:
        for name in ("memory.max", "memory.limit_in_bytes"):
            path = d / name
            if not path.exists():
                continue
            try:
                path.write_text(str(limit))
                done = True
            except OSError:
                continue
            # v1: no swap past the limit either, where the kernel accounts swap.
            with contextlib.suppress(OSError):
                (d / "memory.memsw.limit_in_bytes").write_text(str(limit))
            with contextlib.suppress(OSError):
                (d / "memory.swap.max").write_text("0")
    return done


def existing(run_id: str) -> RunGroup:
    """The run's cgroup as it is on this machine now (empty when it has none)."""
    dirs = []
    for h in hierarchies():
        d = h.base / f"run-{run_id}"
        if d.is_dir():
            dirs.append(d)
    return RunGroup(run_id, tuple(dirs))


def inside_a_run() -> bool:
    """True when this process runs in some run's cgroup (a job started this command)."""
    try:
        return f"/{BASE}/run-" in Path("/proc/self/cgroup").read_text()
    except OSError:
        return False


def move_out(pid: int) -> bool:
    """Move a process that handyjobs started (a tmux server) out of any run's cgroup.

    It goes to ``handyjobs/servers``; True when it was in a run's cgroup and now is not.
    """
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    if f"/{BASE}/run-" not in text:
        return False
    moved = False
    for h in hierarchies():
        target = h.base / SERVERS
        with contextlib.suppress(OSError):
            target.mkdir(parents=True, exist_ok=True)
            (target / "cgroup.procs").write_text(str(pid))
            moved = True
    return moved


def join_self(procs_files: tuple[str, ...]) -> None:
    """Move this process into a run's cgroup (the job, between fork and exec)."""
    for path in procs_files:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
        finally:
            os.close(fd)
