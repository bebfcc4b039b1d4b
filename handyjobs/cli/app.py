"""The Typer app behind ``handyjobs``: every command but a plain ``list`` goes through it."""

from __future__ import annotations

from collections.abc import Sequence

import typer

from handyjobs.cli import (
    attach,
    completion,
    config,
    gpus,
    listing,
    logs,
    plot,
    remove,
    restart,
    send,
    start,
    stop,
    sweep,
    top,
    wait,
)

app = typer.Typer(
    name="handyjobs",
    help="Start PyTorch training jobs on the GPUs you pick, in tmux; see what runs where.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Options of `start` may come before or after SCRIPT; unknown ones go to the script.
app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
    start.start
)
app.command("list")(listing.list_)
app.command()(listing.show)
app.command()(attach.attach)
app.command()(logs.logs)
app.command()(stop.stop)
app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
    restart.restart
)
app.command("wait")(wait.wait)
app.command()(remove.rm)
app.command()(remove.clean)
app.command()(gpus.gpus)
app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
    sweep.sweep
)
app.command()(send.send)
app.command("config")(config.config_)
app.command()(completion.completion)
app.command()(top.top)
app.command()(plot.plot)


def run(args: Sequence[str]) -> object:
    """Parse ``args`` with the app and run the command; returns click's exit code."""
    command = typer.main.get_command(app)
    return command.main(args=list(args), prog_name="handyjobs", standalone_mode=False)


def complete() -> None:
    """Answer the shell's completion request (``_HANDYJOBS_COMPLETE`` is set) and exit."""
    from typer._completion_classes import completion_init

    completion_init()  # Typer's bash/zsh/fish classes, which answer with descriptions
    command = typer.main.get_command(app)
    command.main(prog_name="handyjobs", complete_var=completion.COMPLETE_VAR)
