"""The ``handyjobs`` command: parse, call one function of :mod:`handyjobs.jobs`, render.

This is the one place where errors become exit codes: 0 success, 1 an operation failed,
2 bad usage or bad input; ``wait`` exits with the job's own code.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any, NoReturn

import typer

from handyjobs import jobs
from handyjobs.errors import HandyjobsError
from handyjobs.records import JobState, returncode

app = typer.Typer(
    name="handyjobs",
    help="Start PyTorch training jobs on the GPUs you pick, in tmux; see what runs where.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Options after SCRIPT that handyjobs does not know (the seed's --synch) go to the script.
_PASS_THROUGH: dict[str, Any] = {"allow_extra_args": True, "ignore_unknown_options": True}


def _states(values: list[str] | None) -> list[JobState]:
    out = []
    for value in values or []:
        for item in value.split(","):
            try:
                out.append(JobState(item.strip()))
            except ValueError:
                names = ", ".join(s.value for s in JobState)
                raise typer.BadParameter(f"{item!r} is not a state; use one of {names}") from None
    return out


def _dump(doc: object) -> None:
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")


@app.command(context_settings=_PASS_THROUGH)
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
    record = jobs.start_job(
        jobs.StartRequest(
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
    )
    run = record.current
    where = (
        f"GPUs {','.join(map(str, run.gpus))}"
        if run.gpus
        else "CPU"
        if record.spec.cpu
        else "the caller's devices"
    )
    if run.state is JobState.QUEUED:
        print(f"queued {record.name} (tmux session {record.session}): {run.waiting_for}")
    else:
        print(
            f"started {record.name} in tmux session {record.session} on {where}, "
            f"{run.nproc} process{'es' if run.nproc > 1 else ''}"
        )
    print(f"  log:    {record.log_path}")
    print(f"  attach: handyjobs attach {record.name}    follow: handyjobs logs {record.name} -f")
    sys.stdout.flush()
    if attach:
        _exec_attach(record.name)
    if follow:
        logs(record.name, follow=True)
        raise typer.Exit(returncode(jobs.get_job(record.name).current))


@app.command("list")
def list_(
    all_jobs: Annotated[bool, typer.Option("--all", "-a", help="Every record.")] = False,
    state: Annotated[list[str] | None, typer.Option(help="Only these states.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False,
) -> None:
    """Jobs, newest first: running and queued, and the 20 latest finished."""
    records, total = jobs.list_jobs(all_jobs=all_jobs, states=_states(state))
    if as_json:
        _dump([r.to_dict() for r in records])
        return
    from handyjobs import render

    render.print_jobs(records, total, all_jobs or bool(state))


@app.command()
def show(
    name: str,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False,
) -> None:
    """Everything on a job's record."""
    record = jobs.get_job(name)
    if as_json:
        _dump(record.to_dict())
        return
    from handyjobs import render

    render.print_record(record)


def _exec_attach(name: str) -> NoReturn:
    from handyjobs import tmux

    argv = jobs.attach_argv(name)
    env = dict(os.environ)
    if "switch-client" not in argv:
        env.pop("TMUX", None)  # nesting into our server from another tmux is deliberate
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)
    raise AssertionError(tmux)  # pragma: no cover - exec does not return


@app.command()
def attach(name: str) -> None:
    """Put this terminal into the job's tmux session (detach with Ctrl-b d)."""
    _exec_attach(name)


@app.command()
def logs(
    name: str,
    lines: Annotated[int | None, typer.Option("-n", "--lines", help="Only the last N.")] = None,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Until the job ends.")] = False,
) -> None:
    """Print a job's log (every byte it printed, across restarts)."""
    from handyjobs import logs as logmod

    record = jobs.get_job(name)
    if lines is not None and lines < 0:
        raise typer.BadParameter("-n must be 0 or more")
    data, end = logmod.tail(record.log_path, lines if lines is not None else 1 << 62)
    out = sys.stdout.buffer
    try:
        out.write(data)
        out.flush()
    except BrokenPipeError:
        return
    if follow and record.state.active:
        logmod.follow(
            record.log_path,
            out.fileno(),
            lambda: not jobs.get_job(name).state.active,
            start_offset=end,
        )


@app.command()
def stop(
    names: Annotated[list[str], typer.Argument(help="Jobs to stop.")],
    timeout: Annotated[float, typer.Option(help="Seconds between SIGTERM and SIGKILL.")] = (
        jobs.DEFAULT_GRACE_S
    ),
) -> None:
    """Stop jobs: every process gone (torchrun workers too), GPUs released."""
    for name in names:
        result = jobs.stop_job(name, grace_s=timeout)
        what = "queued job" if result.was_queued else "job"
        print(f"stopped {what} {name} ({len(result.pids)} processes ended)")


@app.command()
def restart(name: str) -> None:
    """Start a job's spec again as a new run (stopping it first if it runs)."""
    record = jobs.restart_job(name)
    print(
        f"restarted {record.name}: run {record.current.run}, state "
        f"{record.current.state.value}; log {record.log_path}"
    )


@app.command("wait")
def wait_(
    name: str,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many s.")] = None,
) -> None:
    """Wait for a job to end; exit with its exit code."""
    record = jobs.wait_job(name, timeout_s=timeout)
    from handyjobs.records import exit_summary

    print(
        f"{name}: {record.state.value} ({exit_summary(record.current) or 'no exit code'})",
        file=sys.stderr,
    )
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
    names = jobs.clean_jobs(logs=with_logs, states=_states(state))
    print(f"removed {len(names)} finished job{'s' if len(names) != 1 else ''}")


@app.command()
def gpus(
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False,
) -> None:
    """GPUs, their memory and use, their processes, and the job that holds each."""
    from handyjobs import render

    discovery, held = jobs.gpu_overview()
    if as_json:
        _dump(render.gpus_json(discovery, held))
    else:
        render.print_gpus(discovery, held)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning expected errors into one line and a code."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="handyjobs", standalone_mode=False)
    except HandyjobsError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as exc:
        # click's usage errors (whichever click copy typer uses): one line, exit code 2.
        fmt = getattr(exc, "format_message", None)
        if fmt is None:
            raise
        ctx = getattr(exc, "ctx", None)
        where = f"handyjobs {ctx.info_name} --help" if ctx and ctx.parent else "handyjobs --help"
        if type(exc).__name__ == "Abort":
            _fail("aborted", 130)
        _fail(f"{fmt()} (see `{where}`)", int(getattr(exc, "exit_code", 2)))
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> NoReturn:
    print(f"handyjobs: error: {message}", file=sys.stderr)
    sys.exit(code)
