"""``handyjobs sweep``: a grid of values, one queued job per point, in one group."""

from __future__ import annotations

import itertools
import re
from typing import Annotated

import typer

from handyjobs.cli import start as startmod
from handyjobs.core import jobs, registry
from handyjobs.core.spec import check_name, default_stem
from handyjobs.errors import UsageError

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


def sweep(
    ctx: typer.Context,
    script: Annotated[str, typer.Argument(help="Script to run for every point of the grid.")],
    args: Annotated[list[str] | None, typer.Argument(help="Arguments for every job.")] = None,
    grid: Annotated[
        list[str] | None, typer.Option(help="KEY=V1,V2,... (repeatable): the values to sweep.")
    ] = None,
    arg_format: Annotated[
        str, typer.Option(help="How a value reaches the script ({key}, {value}).")
    ] = "--{key}={value}",
    group: Annotated[
        str | None, typer.Option(help="Group name (default: from the script).")
    ] = None,
    prefix: Annotated[str | None, typer.Option(help="Job names start with this.")] = None,
    gpus: startmod.Gpus = None,
    ngpus: startmod.Ngpus = None,
    cpu: startmod.Cpu = False,
    nproc: startmod.Nproc = None,
    env: startmod.Env = None,
    cwd: startmod.Cwd = None,
    module: startmod.Module = False,
    exec_: startmod.Exec = False,
    python: startmod.Python = None,
    after: startmod.After = None,
    after_any: startmod.AfterAny = None,
    priority: startmod.Priority = 0,
    on_exit: startmod.OnExit = None,
    slurm: startmod.Slurm = False,
    nodes: startmod.Nodes = None,
    gpus_per_node: startmod.GpusPerNode = None,
    partition: startmod.Partition = None,
    time: startmod.Time = None,
    account: startmod.Account = None,
    mem: startmod.Mem = None,
    constraint: startmod.Constraint = None,
    slurm_arg: startmod.SlurmArg = None,
    requeue: startmod.Requeue = False,
    signal_before: startmod.SignalBefore = None,
) -> None:
    """Queue one job per point of a grid (--grid lr=1e-3,3e-4 --grid bs=32,64), in one group.

    Each job gets its values as arguments (--lr=1e-3 --bs=32, then ARGS) and as
    HANDYJOBS_PARAM_LR, HANDYJOBS_PARAM_BS in its environment; jobs start as GPUs and slots
    allow (see `handyjobs config parallel N --group G`), or as Slurm runs them (--slurm).
    """
    slurm_req = startmod.slurm_request(ctx.params)
    points_grid = parse_grid(grid or [])
    if "{value}" not in arg_format:
        raise UsageError("--arg-format must contain {value} (and usually {key})")
    stem = default_stem(script, module)
    group = check_name(group) if group else _free_group(stem)
    prefix = check_name(prefix) if prefix else stem
    names = point_names(prefix, points_grid)
    taken = [n for n in names if registry.load_one(n) is not None]
    if taken:
        raise UsageError(
            f"a job named {taken[0]} exists (an earlier sweep?); pick another --prefix, "
            f"or remove those jobs (`handyjobs rm`)"
        )
    points = list(itertools.product(*(values for _, values in points_grid)))
    reqs = []
    for i, (name, point) in enumerate(zip(names, points, strict=True)):
        params = [(key, value) for (key, _), value in zip(points_grid, point, strict=True)]
        extra = [arg_format.format(key=k, value=v) for k, v in params]
        sweep_env = [f"HANDYJOBS_SWEEP_INDEX={i}", f"HANDYJOBS_SWEEP_SIZE={len(points)}"]
        reqs.append(
            startmod.request(
                script,
                [*extra, *(args or [])],
                name=name,
                gpus=gpus,
                ngpus=ngpus,
                cpu=cpu,
                nproc=nproc,
                env=[*(env or []), *sweep_env],
                cwd=cwd,
                module=module,
                executable=exec_,
                python=python,
                # A sweep queues for GPUs rather than failing when they are busy; on Slurm,
                # Slurm's queue does.
                wait=not slurm,
                group=group,
                after=after,
                after_any=after_any,
                priority=priority,
                on_exit=on_exit,
                params=params,
                slurm=slurm_req,
            )
        )
    records = jobs.start_jobs(reqs)
    print(f"sweep {group}: {len(records)} jobs")
    for record, req in zip(records, reqs, strict=True):
        startmod.announce(record, req, brief=True)
    print(f"  list:   handyjobs list --group {group}    wait: handyjobs wait --group {group}")


def _free_group(stem: str) -> str:
    """A group name no job uses yet: ``train-sweep``, ``train-sweep2``, ..."""
    used = {r.spec.group for r in registry.load_all(None) if r.spec.group}
    base = f"{stem[:50]}-sweep"
    n = 1
    while (base if n == 1 else f"{base}{n}") in used:
        n += 1
    return base if n == 1 else f"{base}{n}"


