"""The Typer app behind ``handyjobs``: option declarations and help, one thin function each.

Imported by :func:`handyjobs.cli.main` for every command but a plain ``list``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from handyjobs import cli, jobs

app = typer.Typer(
    name="handyjobs",
    help="Start PyTorch training jobs on the GPUs you pick, in tmux; see what runs where.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

Json = Annotated[bool, typer.Option("--json", help="JSON for scripts (schema in the README).")]


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def start(
    script: Annotated[str, typer.Argument(help="Script to run (or module with -m).")],
    args: Annotated[list[str] | None, typer.Argument(help="Arguments for the script.")] = None,
    gpus: Annotated[str | None, typer.Option(help="GPUs by nvidia-smi index or UUID: 2,4")] = None,
    ngpus: Annotated[int | None, typer.Option(help="Any N free GPUs.")] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="Run on the CPU (gloo for DDP).")] = False,
    nproc: Annotated[int | None, typer.Option(help="Processes (default: one per GPU).")] = None,
    name: Annotated[str | None, typer.Option(help="Job and tmux session name.")] = None,
    env: Annotated[list[str] | None, typer.Option(help="Extra KEY=VALUE for the job.")] = None,
    cwd: Annotated[str | None, typer.Option(help="Working directory of the job.")] = None,
    module: Annotated[bool, typer.Option("-m", "--module", help="SCRIPT is a module.")] = False,
    python: Annotated[str | None, typer.Option(help="Python to run the job with.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Queue until the GPUs are free.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Use GPUs even if busy.")] = False,
    attach: Annotated[bool, typer.Option("--attach", help="Attach to it at once.")] = False,
    follow: Annotated[bool, typer.Option("--follow", help="Follow its log to the end.")] = False,
) -> None:
    """Start SCRIPT as a job in its own tmux session (torchrun when several processes)."""
    req = jobs.StartRequest(
        script=script,
        args=list(args or []),
        module=module,
        name=name,
        gpus=gpus,
        ngpus=ngpus,
        cpu=cpu,
        nproc=nproc,
        env=env or [],
        cwd=cwd,
        python=python,
        wait=wait,
        force=force,
    )
    raise typer.Exit(cli.do_start(req, attach, follow))


@app.command("list")
def list_(
    all_jobs: Annotated[bool, typer.Option("--all", "-a", help="Every record.")] = False,
    state: Annotated[list[str] | None, typer.Option(help="Only these states.")] = None,
    as_json: Json = False,
) -> None:
    """Jobs, newest first: running and queued, and the 20 latest finished."""
    cli.do_list(all_jobs, state, as_json)


@app.command()
def show(name: str, as_json: Json = False) -> None:
    """Everything on a job's record."""
    record = jobs.get_job(name)
    if as_json:
        cli.dump_json(record.to_dict())
        return
    from handyjobs import render

    render.print_record(record)


@app.command()
def attach(name: str) -> None:
    """Put this terminal into the job's tmux session (detach with Ctrl-b d)."""
    cli.exec_attach(name)


@app.command()
def logs(
    name: str,
    lines: Annotated[int | None, typer.Option("-n", "--lines", help="Only the last N.")] = None,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Until the job ends.")] = False,
) -> None:
    """Print a job's log (every byte it printed, across restarts)."""
    cli.do_logs(name, lines, follow)


@app.command()
def stop(
    names: Annotated[list[str], typer.Argument(help="Jobs to stop.")],
    timeout: Annotated[
        float, typer.Option(help="Seconds between SIGTERM and SIGKILL.")
    ] = jobs.DEFAULT_GRACE_S,
) -> None:
    """Stop jobs: every process gone (torchrun workers too), GPUs released."""
    for name in names:
        result = jobs.stop_job(name, grace_s=timeout)
        what = "queued job" if result.was_queued else "job"
        n = len(result.pids)
        print(f"stopped {what} {name} ({n} process{'' if n == 1 else 'es'} ended)")


@app.command()
def restart(name: str) -> None:
    """Start a job's spec again as a new run (stopping it first if it runs)."""
    record = jobs.restart_job(name)
    run = record.current
    print(f"restarted {record.name}: run {run.run}, {run.state.value}; log {record.log_path}")


@app.command("wait")
def wait_(
    name: str,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many s.")] = None,
) -> None:
    """Wait for a job to end; exit with its exit code."""
    from handyjobs.records import exit_summary, returncode

    record = jobs.wait_job(name, timeout_s=timeout)
    how = exit_summary(record.current) or "no exit code"
    print(f"{name}: {record.state.value} ({how})", file=sys.stderr)
    raise typer.Exit(returncode(record.current))


@app.command()
def rm(
    names: Annotated[list[str], typer.Argument(help="Jobs to remove.")],
    force: Annotated[bool, typer.Option("--force", help="Stop active jobs first.")] = False,
    with_logs: Annotated[bool, typer.Option("--logs", help="Delete their logs too.")] = False,
) -> None:
    """Remove finished jobs from the registry (logs kept unless --logs)."""
    for name in jobs.remove_jobs(names, force=force, logs=with_logs):
        print(f"removed {name}")


@app.command()
def clean(
    with_logs: Annotated[bool, typer.Option("--logs", help="Delete their logs too.")] = False,
    state: Annotated[list[str] | None, typer.Option(help="Only these end states.")] = None,
) -> None:
    """Remove every finished job from the registry."""
    names = jobs.clean_jobs(logs=with_logs, states=cli.parse_states(state))
    print(f"removed {len(names)} finished job{'s' if len(names) != 1 else ''}")


@app.command()
def gpus(as_json: Json = False) -> None:
    """GPUs, their memory and use, their processes, and the job that holds each."""
    from handyjobs import render

    discovery, held = jobs.gpu_overview()
    if as_json:
        cli.dump_json(render.gpus_json(discovery, held))
    else:
        render.print_gpus(discovery, held)


def run(args: Sequence[str]) -> object:
    """Parse ``args`` with the app and run the command; returns click's exit code."""
    command = typer.main.get_command(app)
    return command.main(args=list(args), prog_name="handyjobs", standalone_mode=False)
