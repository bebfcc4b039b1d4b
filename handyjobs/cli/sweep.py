"""``handyjobs sweep``: a grid of values, one queued job per point, in one group (on Slurm, one
job array whose tasks are the points)."""

from __future__ import annotations

import itertools
import re

from handyjobs.cli import start as startmod
from handyjobs.cli.parse import Arg, Command, Parsed
from handyjobs.core import options as table
from handyjobs.core import paths
from handyjobs.core.options import option
from handyjobs.errors import UsageError
from handyjobs.structs import replace

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from handyjobs.core.spec import StartRequest

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """``--grid lr=1e-3,3e-4`` (repeatable) as ``[("lr", ["1e-3", "3e-4"]), ...]``."""
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not _KEY_RE.match(key):
            raise UsageError(f"--grid {item!r}: write it as KEY=V1,V2,... (KEY like lr or bs)")
        points = [v.strip() for v in values.split(",")]
        if not all(points):
            raise UsageError(f"--grid {item!r} has an empty value; give values: {key}=1,2")
        if any(key == k for k, _ in grid):
            raise UsageError(f"--grid names {key} twice; give all its values in one --grid")
        grid.append((key, list(dict.fromkeys(points))))
    if not grid:
        raise UsageError("give at least one --grid KEY=V1,V2")
    return grid


def check_arg_format(arg_format: str) -> None:
    """Refuse an ``--arg-format`` that names a field other than {key} and {value}, or that
    str.format cannot read (a lone brace): one usage line, before anything is queued."""
    import string  # lazy: only sweep reads a format

    try:
        fields = [f for _, f, _spec, _conv in string.Formatter().parse(arg_format) if f is not None]
    except ValueError as exc:  # "Single '{' encountered", "unmatched '{'"
        raise UsageError(
            f"--arg-format {arg_format!r}: {exc}; write a literal brace as {{{{ or }}}}"
        ) from None
    bad = [f for f in fields if f not in ("key", "value")]
    if bad:
        raise UsageError(
            f"--arg-format {arg_format!r} names {{{bad[0]}}}; only {{key}} and {{value}} exist"
            " (write a literal brace as {{ or }})"
        )
    if "value" not in fields:
        raise UsageError("--arg-format must contain {value} (and usually {key})")
    try:  # a field inside a format spec ({value:>{n}}) or a bad conversion fails only here
        arg_format.format(key="lr", value="1e-3")
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        raise UsageError(
            f"--arg-format {arg_format!r} cannot be filled ({type(exc).__name__}: {exc});"
            " use {key} and {value}, and {{ or }} for a literal brace"
        ) from None


def _slug(text: str) -> str:
    """A value as it may appear in a job name: ``0.1`` -> ``0p1``, ``a/b`` -> ``a-b``."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", text.replace(".", "p")).strip("-") or "x"


def point_names(prefix: str, grid: list[tuple[str, list[str]]]) -> list[str]:
    """One job name per point: ``train-lr1e-3-bs32``; numbered when values make long names."""
    names = []
    points = list(itertools.product(*(values for _, values in grid)))
    for i, point in enumerate(points):
        parts = [f"{_slug(key)}{_slug(value)}" for (key, _), value in zip(grid, point, strict=True)]
        name = "-".join([prefix, *parts])
        names.append(name if len(name) <= 64 else f"{prefix[:50]}-{i + 1}")
    if len(set(names)) != len(names):
        names = [f"{prefix[:50]}-{i + 1}" for i in range(len(points))]
    return names


def point_requests(
    p: Parsed, script: str, grid: list[tuple[str, list[str]]], group: str, names: list[str]
) -> list[StartRequest]:
    """One request per point of the grid: its values as arguments and in the environment."""
    # lazy: only this command pays for it, not `--help` or the other commands
    from handyjobs.core.spec import StartRequest

    arg_format = p.text("arg_format")
    assert arg_format is not None
    points = list(itertools.product(*(values for _, values in grid)))
    backend = startmod.backend_part(p.typed)
    # A sweep queues for GPUs rather than failing when they are busy; elsewhere (a cluster),
    # the scheduler's queue does.
    queue_here = backend is None or not backend.submits
    reqs = []
    for i, (name, point) in enumerate(zip(names, points, strict=True)):
        params = [(key, value) for (key, _), value in zip(grid, point, strict=True)]
        extra = [arg_format.format(key=k, value=v) for k, v in params]
        base = StartRequest(
            script=script,
            args=[*extra, *p.items("args")],
            name=name,
            wait=queue_here,
            group=group,
            params=params,
            backend=backend,
        )
        req = table.request(base, {k: v for k, v in p.typed.items() if k in _FROM_START})
        sweep_env = [f"HANDYJOBS_SWEEP_INDEX={i}", f"HANDYJOBS_SWEEP_SIZE={len(points)}"]
        reqs.append(replace(req, env=[*req.env, *sweep_env]))
    return reqs


def _run(p: Parsed) -> None:
    # lazy: only this command pays for it, not `--help` or the other commands
    from handyjobs.core import starting
    from handyjobs.core.spec import check_name, default_stem, sweep_names

    script, arg_format = p.text("script"), p.text("arg_format")
    assert script is not None and arg_format is not None
    parallel = p.number("parallel")
    if parallel is not None and parallel < 1:
        raise UsageError(
            f"--parallel {parallel}: give how many of the sweep's jobs may run at once (1 or more)"
        )
    grid = parse_grid(p.items("grid"))
    check_arg_format(arg_format)
    stem = default_stem(script, p.flag("module"))
    group, prefix = p.text("group"), p.text("prefix")
    if group is not None:
        check_name(group)
    if prefix:
        check_name(prefix)
    # Two sweeps of one script at once must not pick the same names and group: the choice
    # and the saving of the jobs happen under one lock (a sweep waits for the other's).
    with paths.held(paths.sweep_lock_path(paths.ensure_home())):
        names, group = sweep_names(
            lambda first: point_names(first, grid), stem, prefix or None, group
        )
        reqs = point_requests(p, script, grid, group, names)
        records = starting.start_sweep(reqs, parallel)
    print(f"sweep {group}: {len(records)} jobs")
    for record, req in zip(records, reqs, strict=True):
        startmod.announce(record, req, brief=True)
    print(f"  list:   handyjobs list --group {group}    wait: handyjobs wait --group {group}")


#: What sweep takes of start's options (the table says which), its own first.
_FROM_START = tuple(opt.name for opt in startmod.OPTIONS if opt.sweep)

COMMAND = Command(
    "sweep",
    """Queue one job per point of a grid (--grid lr=1e-3,3e-4 --grid bs=32,64), in one group.

    Each job gets its values as arguments (--lr=1e-3 --bs=32, then ARGS) and as
    HANDYJOBS_PARAM_LR, HANDYJOBS_PARAM_BS in its environment; jobs start as GPUs and slots
    allow (see `handyjobs config parallel N --group G`), or as Slurm runs them (--slurm: one
    job array, one task per point). --parallel K: at most K of them run at once.
    """,
    _run,
    args=(
        Arg("script", "Script to run for every point of the grid.", required=True),
        Arg("args", "Arguments for every job.", many=True),
    ),
    options=(
        option("--grid", "list", "K=V1,V2", "KEY=V1,V2,... (repeatable): the values to sweep."),
        option(
            "--arg-format",
            "str",
            "FORMAT",
            "How a value reaches the script ({key}, {value}).",
            default="--{key}={value}",
        ),
        option("--group", "str", "GROUP", "Group name (default: from the script)."),
        option("--prefix", "str", "PREFIX", "Job names start with this."),
        option(
            "--parallel",
            "int",
            "K",
            "At most K of the sweep's jobs at once (the group's limit; on Slurm the job "
            "array's throttle, %K).",
        ),
        *(opt for opt in startmod.OPTIONS if opt.sweep),
    ),
    passthrough=True,
)
