"""Turn records and GPUs into text: rich tables on a terminal, plain columns elsewhere.

Plain output does not import rich, which keeps ``handyjobs list | grep`` fast; colour follows
``NO_COLOR`` and TTY detection (rich's own rules).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone

from handyjobs import backends
from handyjobs.core import shell
from handyjobs.core.records import (
    Blocker,
    BlockKind,
    GpuUser,
    JobRecord,
    JobState,
    LostKind,
    Reason,
    Wait,
    exit_summary,
    parse_time,
)
from handyjobs.errors import GpuBusy, HandyjobsError
from handyjobs.errors import printable as printable  # where messages are made safe

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from typing import Any

    from handyjobs.backends.base import Describe
    from handyjobs.gpus.discovery import Discovery

#: The colour of each state in tables (rich style names; `list` maps them to ANSI codes).
STATE_STYLE = {
    JobState.QUEUED: "yellow",
    JobState.RUNNING: "bold cyan",
    JobState.PAUSED: "cyan",
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "bold red",
    JobState.STOPPED: "magenta",
    JobState.LOST: "red",
}


def fancy() -> bool:
    """True when stdout is a terminal (rich tables); False for pipes and files."""
    return sys.stdout.isatty() and os.environ.get("TERM") != "dumb"


def duration(seconds: float | None) -> str:
    """``4.2s``, ``3m12s``, ``1h02m``, ``2d03h``."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def when(stamp: str | None, now: datetime | None = None) -> str:
    """A timestamp in local time: ``23:08:55`` today, ``11-20 23:08`` this year, else a date."""
    if not stamp:
        return ""
    moment = parse_time(stamp).astimezone()
    today = (now or datetime.now(timezone.utc)).astimezone()
    if moment.date() == today.date():
        return moment.strftime("%H:%M:%S")
    if moment.year == today.year:
        return moment.strftime("%m-%d %H:%M")
    return moment.strftime("%Y-%m-%d")


def gpu_text(record: JobRecord) -> str:
    """The GPUs of a run, or what it waits for, or ``cpu``."""
    run = record.current
    own = backends.describe(run.backend).gpus(record)
    if own is not None:
        return own
    if run.gpus:
        return ",".join(map(str, run.gpus))
    spec = record.spec
    if run.state is JobState.QUEUED and spec.books_gpus:
        return f"wait {','.join(map(str, spec.gpus))}" if spec.gpus else f"wait any {spec.ngpus}"
    return "cpu" if spec.cpu else "-"


def job_rows(records: Sequence[JobRecord], params: bool = False) -> list[list[str]]:
    """One row of strings per record, in the list's column order (``params``: a sweep's
    values before the command)."""
    now = datetime.now(timezone.utc)
    rows = []
    for r in records:
        command = printable(r.spec.command)
        home = os.path.expanduser("~")
        if command.startswith(home + "/"):
            command = "~" + command[len(home) :]
        row = [
            r.name,
            list_state(r),
            gpu_text(r),
            nproc_text(r),
            when(r.current.started_at, now) or "-",  # one that never started has no time
            duration(r.duration_s(now)),
            exit_summary(r.current),
        ]
        if params:
            row.append(printable(" ".join(f"{k}={v}" for k, v in r.spec.params)) or "-")
        rows.append([*row, command])
    return rows


def nproc_text(record: JobRecord) -> str:
    """Processes: ``2``, or nodes x processes per node (``2x4``) for several machines."""
    n = record.spec.nnodes
    return f"{n}x{record.current.nproc}" if n > 1 else str(record.current.nproc)


def list_state(record: JobRecord) -> str:
    """The STATE cell: a queued run carries its place in the queue (``queued #2``); a held
    one says ``held``; one the cluster requeued, ``requeued``."""
    wait = record.current.wait
    if record.state is JobState.QUEUED and record.current.held:
        return "held"
    if record.state is JobState.QUEUED and wait is not None and wait.position is not None:
        return f"queued #{wait.position}"
    view = record.current.cluster
    if record.state is JobState.QUEUED and view is not None and view.restarts:
        return "requeued"  # the scheduler requeued it (preempted, a node failed): it comes back
    return record.state.value


def queue_lines(records: Sequence[JobRecord]) -> list[str]:
    """Under the table, why each queued job waits, first in the queue first."""
    queued = [r for r in records if r.state is JobState.QUEUED]
    last = len(records) + 1  # runs waiting for dependencies have no place yet: after the rest

    def place(r: JobRecord) -> int:
        wait = r.current.wait
        return wait.position if wait is not None and wait.position is not None else last

    lines = []
    for r in sorted(queued, key=place):
        wait = r.current.wait
        why = wait_text(wait) if wait is not None else "waiting for the next scheduling pass"
        where = f"#{wait.position} " if wait is not None and wait.position is not None else ""
        lines.append(f"{where}{r.name}: {printable(why)}")
    return lines


JOB_COLUMNS = ["NAME", "STATE", "GPUS", "NPROC", "STARTED", "DURATION", "EXIT", "COMMAND"]


def job_columns(params: bool) -> list[str]:
    """The list's header, with PARAMS when a sweep's jobs are shown."""
    return [*JOB_COLUMNS[:-1], "PARAMS", JOB_COLUMNS[-1]] if params else JOB_COLUMNS


def plain_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, the last one left ragged."""
    widths = [
        max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
        for i, h in enumerate(header)
    ]
    lines = []
    for row in [list(header), *rows]:
        cells = [c.ljust(widths[i]) for i, c in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def print_jobs(
    records: Sequence[JobRecord],
    total: int,
    all_shown: bool,
    metric: str | None = None,
    values: dict[str, float | None] | None = None,
) -> None:
    """The ``list`` table, and a hint when some records are not shown."""
    params = any(r.spec.params for r in records)
    rows = job_rows(records, params)
    columns = job_columns(params)
    if metric:  # a column for the metric, before the command (which is left ragged)
        columns = [*columns[:-1], printable(metric).upper(), columns[-1]]
        rows = [
            [*row[:-1], metric_value((values or {}).get(r.name)), row[-1]]
            for r, row in zip(records, rows, strict=True)
        ]
    note = ""
    if not all_shown and total > len(records):
        note = f"{len(records)} of {total} jobs shown; `handyjobs list --all` shows every one"
    if not records:
        if total == 0:
            print("no jobs yet; start one with `handyjobs start SCRIPT`")
        else:
            print(f"no job matches ({total} in the registry; `handyjobs list --all` shows them)")
        return
    waits = queue_lines(records)
    if not fancy():
        print(plain_table(columns, rows))
        if waits:
            print("\n".join(waits))
        if note:
            print(note, file=sys.stderr)
        return
    # A terminal: the same columns, coloured by state and cut to the window's width. Drawn by
    # hand rather than with rich, whose import alone would double `list`'s start-up time.
    width = shell.terminal_columns()
    lines = plain_table(columns, rows).splitlines()
    colour = use_colour()
    out = [_style(lines[0][:width], "1", colour)]
    for record, line in zip(records, lines[1:], strict=True):
        out.append(_style_state(line[:width], record.state, colour))
    out.extend(_style(line[:width], "2", colour) for line in waits)
    if note:
        out.append(_style(note, "2", colour))
    print("\n".join(out))


_ANSI = {
    "yellow": "33",
    "bold cyan": "1;36",
    "cyan": "36",
    "green": "32",
    "bold red": "1;31",
    "magenta": "35",
    "red": "31",
}


def use_colour() -> bool:
    """Colour on a terminal unless ``NO_COLOR`` is set (https://no-color.org)."""
    return fancy() and not os.environ.get("NO_COLOR")


def _style(text: str, code: str, colour: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if colour else text


def _style_state(line: str, state: JobState, colour: bool) -> str:
    """Colour the state word of a table line (the second column)."""
    if not colour:
        return line
    at = line.find(" " + state.value) + 1
    if at <= 0:
        return line
    code = _ANSI[STATE_STYLE[state]]
    end = at + len(state.value)
    return f"{line[:at]}\x1b[{code}m{line[at:end]}\x1b[0m{line[end:]}"


def state_text(record: JobRecord) -> str:
    """The state with why: ``queued (GPU 2 is held by job exp1)``, ``lost (runner killed)``."""
    run = record.current
    if run.state is JobState.QUEUED and run.wait is not None:
        return f"queued ({wait_text(run.wait)})"
    if run.reason is not None and run.state in (JobState.LOST, JobState.FAILED):
        return f"{run.state.value} ({reason_text(run.reason)})"
    if run.state is JobState.PAUSED:
        return f"paused ({paused_text(run.gpus)}; `handyjobs resume {record.name}` goes on)"
    view = run.cluster
    if view is not None and not run.state.active:
        plain = _describer(view.scheduler)
        if plain is None or view.state not in plain.plain_ends:
            return f"{run.state.value} ({_scheduler(view.scheduler)} says {view.state})"
    return str(run.state.value)  # narrowed above, mypy reads the member's value as Any


def paused_text(gpus: Sequence[int]) -> str:
    """What pausing a run keeps: its processes are stopped, its GPUs stay booked."""
    kept = f"; GPU{'s' if len(gpus) > 1 else ''} {','.join(map(str, gpus))} stay booked"
    return "its processes are stopped" + (kept if gpus else "")


def _describer(name: str | None) -> Describe | None:
    """The views' part of a backend named by a record; None for a name this handyjobs lacks."""
    return backends.describe(name) if name in backends.KNOWN else None


def _scheduler(name: str | None) -> str:
    known = _describer(name)
    return known.title if known is not None else name or "the scheduler"


def submitted_lines(record: JobRecord) -> list[str]:
    """What ``start`` prints when a backend's scheduler took the job ([] when it says nothing)."""
    return backends.describe(record.current.backend).submitted(record, state_text(record))


def gpu_rows(discovery: Discovery, held: dict[int, str]) -> list[list[str]]:
    """One row per GPU for ``handyjobs gpus``."""
    rows = []
    for g in discovery.gpus:
        procs = ", ".join(f"{p.pid}{'/' + p.user if p.user else ''}" for p in g.processes)
        util = "" if g.utilization_pct is None else f"{g.utilization_pct}%"
        memory = f"{g.memory_used_mib}/{g.memory_total_mib} MiB"
        if g.error is not None and not g.memory_total_mib:
            memory = "unknown"  # a MIG parent read without root, or a GPU that did not answer
        rows.append(
            [
                str(g.index),
                g.name + (" [MIG]" if g.mig else ""),
                memory,
                util,
                held.get(g.index, "-"),
                procs or "-",
            ]
        )
    return rows


GPU_COLUMNS = ["GPU", "NAME", "MEMORY", "UTIL", "JOB", "PROCESSES (pid/user)"]


def print_gpus(discovery: Discovery, held: dict[int, str]) -> None:
    """``handyjobs gpus`` as a table."""
    if not discovery.gpus:
        print(
            f"no NVIDIA GPU found ({discovery.note or 'nothing detected'}); "
            "jobs can still run with --cpu"
        )
        return
    print(plain_table(GPU_COLUMNS, gpu_rows(discovery, held)))
    for g in discovery.gpus:
        if g.error is not None:
            print(f"GPU {g.index}: {printable(g.error)}")
    if discovery.note:  # something hung, or a fallback was used: say so under the table
        print(f"note: {printable(discovery.note)}")


def gpus_json(discovery: Discovery, held: dict[int, str]) -> dict[str, Any]:
    """``handyjobs gpus --json``: discovery plus the holding job of each GPU."""
    doc = discovery.to_dict()
    for entry in doc["gpus"]:
        entry["job"] = held.get(entry["index"])
    return doc


# ---- reasons as words ----------------------------------------------------------------------


def _gpu_user(proc: GpuUser) -> str:
    """``pid 4242 python by alice``, leaving out what is unknown."""
    text = f"pid {proc.pid}"
    if proc.name:
        text += f" {proc.name}"
    if proc.user:
        text += f" by {proc.user}"
    return text


def busy_text(b: Blocker) -> str:
    """What makes a GPU busy, without the GPU: ``2 processes (pid 1 by bob, ...)``."""
    if b.kind is BlockKind.PROCESSES:
        n = len(b.processes)
        noun = "process" if n == 1 else "processes"
        return f"{n} {noun} ({', '.join(_gpu_user(p) for p in b.processes)})"
    if b.kind is BlockKind.MEMORY:
        return f"{b.used_mib} MiB of memory in use (threshold {b.threshold_mib} MiB)"
    if b.kind is BlockKind.MIG:
        return "MIG mode is on (a plain index reaches one instance at most; --force to use it)"
    if b.kind is BlockKind.UNREADABLE:
        return f"it could not be read ({b.detail})"
    return str(b.kind.value)


def blocker_text(b: Blocker) -> str:
    """One GPU's blocker as a clause: ``GPU 2 is held by job exp1``."""
    if b.kind is BlockKind.HELD:
        return f"GPU {b.gpu} is held by job {b.job}"
    if b.kind is BlockKind.WANTED:
        return f"GPU {b.gpu} is wanted by queued job {b.job}"
    if b.kind is BlockKind.MISSING:
        return f"GPU {b.gpu} is not there"
    return f"GPU {b.gpu} is busy: {busy_text(b)}"


def scheduler_reason(scheduler: str | None, reason: str | None) -> str:
    """A scheduler's pending reason, as it names it and in words (``NAME: Priority, jobs ...``)."""
    word = reason or "None"
    known = _describer(scheduler)
    words = known.reason_words(word.split(",", 1)[0]) if known is not None else None
    return f"{_scheduler(scheduler)}: {printable(word)}" + (f", {words}" if words else "")


def error_text(exc: HandyjobsError) -> str:
    """The one line the CLI prints for an error: its message, with its reason in words."""
    if isinstance(exc, GpuBusy):
        return f"{wait_text(exc.wait)}; {exc.hint} (see `handyjobs gpus`)"
    return str(exc)


def wait_text(wait: Wait) -> str:
    """Why a run waits, in one line."""
    if wait.held:
        # A scheduler that holds it says so in its own word too (JobHeldUser).
        said = f" ({_scheduler(wait.scheduler)}: {printable(wait.reason)})" if wait.reason else ""
        return f"held: it starts only after `handyjobs release`{said}"
    if wait.scheduler is not None:
        return scheduler_reason(wait.scheduler, wait.reason)
    if wait.config is not None:
        why = printable(f"{wait.config} is not valid ({wait.reason})")
        return f"the queue waits: {why}; fix it or remove it"
    if wait.after:
        return f"waiting for {', '.join(wait.after)} to end"
    if wait.paused:
        return f"group {wait.group} is paused (`handyjobs resume --group {wait.group}`)"
    if wait.limit is not None:
        whose = f" of group {wait.group}" if wait.group else ""
        return f"{wait.running} of {wait.limit} jobs{whose} allowed at once are running"
    reasons = "; ".join(blocker_text(b) for b in wait.blockers)
    if wait.by_count:
        head = f"only {wait.free} of the {wait.needed} GPUs asked for are free"
        return head + (f" ({reasons})" if reasons else "")
    return reasons or "the GPUs asked for are not free"


_LOST = {
    LostKind.RUNNER_DIED: "its runner ended without recording an outcome (killed?)",
    LostKind.SESSION_GONE: "its tmux session went away (killed, or the tmux server ended)",
    LostKind.REBOOT: "the machine restarted while it ran",
    LostKind.RUNNER_ERROR: "its runner failed",
    LostKind.START_FAILED: "it could not start",
    LostKind.CLUSTER_ENDED: "the cluster ended it and the job recorded no outcome",
    LostKind.NO_JOB_SIDE: "never started: the scheduler ran it, but its runner never reported",
    LostKind.DEPENDENCY_FAILED: "never started",
    LostKind.TIME_LIMIT: "time limit",
    LostKind.OUT_OF_MEMORY: "out of memory",
}


def reason_text(reason: Reason) -> str:
    """Why a run was lost or failed to start, in words, with what is left of it."""
    text = _LOST[reason.kind]
    if reason.kind is LostKind.DEPENDENCY_FAILED:
        how = "is gone" if reason.detail in (None, "gone") else reason.detail
        return f"{text}: job {reason.job}, which it was to start after, {how}"
    if reason.detail and reason.kind in (LostKind.RUNNER_ERROR, LostKind.START_FAILED):
        text += f": {printable(reason.detail)}"
    if reason.detail and reason.kind is LostKind.CLUSTER_ENDED:
        text += f" (its state: {printable(reason.detail)})"
    if reason.kind is LostKind.NO_JOB_SIDE:
        text += (
            f" (its state: {printable(reason.detail or '-')}): the scheduler's output file in "
            "the job's folder says why; with none there, the node could not write that folder "
            "(HANDYJOBS_HOME must be a folder every node shares)"
        )
    if reason.detail and reason.detail.isdigit():  # the limit it hit: seconds, or bytes
        limit = int(reason.detail)
        if reason.kind is LostKind.TIME_LIMIT:
            text += f": it ran its --time of {duration(limit)}"
        elif reason.kind is LostKind.OUT_OF_MEMORY:
            text += f": it went over its --mem of {size(limit)}"
    if reason.pids:
        n = len(reason.pids)
        which = "1 of its processes still runs" if n == 1 else f"{n} of its processes still run"
        text += f"; {which} ({', '.join(map(str, reason.pids))}): `handyjobs stop` ends them"
    return text


# ---- logs, ranks, cost ---------------------------------------------------------------------


def no_metric(metric: str, jobs_without: Sequence[str], seen: Sequence[str]) -> str:
    """The error when no job named has a point of the metric."""
    names = ", ".join(jobs_without)
    if seen:
        who = "it" if len(jobs_without) == 1 else "they"
        return (
            f"no point of metric {metric!r} in {names}; {who} logged {', '.join(seen)}: "
            "pick one with --metric"
        )
    return (
        f"{names} logged no metrics yet; log them from the job with trainer.log_metrics "
        "or handyjobs.log_metrics"
    )


def size(n: int | None) -> str:
    """Bytes for people: ``512 MiB``, ``1.5 GiB``."""
    if n is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{n} B"


def metric_value(value: float | None) -> str:
    """A metric's value in a table cell."""
    if value is None:
        return "-"
    if value != value:  # NaN (a diverged loss) shows as such; inf reads "inf" already
        return "NaN"
    return f"{value:.4g}"
