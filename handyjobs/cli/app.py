"""The Typer app that answers shell completion, built from the commands' declarations.

Commands run through :mod:`handyjobs.cli.parse`; Typer (through its public API: ``Typer``,
``Option``, ``Argument``, ``typer.main.get_command``) is imported only when the shell asks for
completions, or for Typer's own ``--install-completion`` and ``--show-completion``. Each
command becomes a Typer command whose signature is made from its :class:`Command`, so
completion offers exactly the options and arguments the parser reads, and job names where a
declaration asks for them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Annotated, Any, NoReturn

import typer
import typer.completion
import typer.main

from handyjobs.cli.commands import COMMANDS, COMPLETE_VAR, command
from handyjobs.cli.common import complete_names
from handyjobs.cli.parse import Arg, Command
from handyjobs.core.options import Option

_TYPES: dict[str, Any] = {
    "flag": bool,
    "int": int | None,
    "float": float | None,
    "str": str | None,
    "list": list[str] | None,
}
_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def _completer(what: str) -> Callable[[str], list[str]] | None:
    return complete_names if what == "jobs" else None


def _option(opt: Option) -> inspect.Parameter:
    info = typer.Option(*opt.flags, help=opt.help, autocompletion=_completer(opt.complete))
    return inspect.Parameter(
        opt.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=opt.default,
        annotation=Annotated[_TYPES[opt.kind], info],
    )


def _argument(arg: Arg) -> inspect.Parameter:
    info = typer.Argument(help=arg.help, autocompletion=_completer(arg.complete))
    kind: Any = list[str] if arg.many else str
    if not arg.required:
        kind = kind | None
    return inspect.Parameter(
        arg.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=inspect.Parameter.empty if arg.required else None,
        annotation=Annotated[kind, info],
    )


def _callback(cmd: Command) -> Callable[..., None]:
    """A function whose signature is the command's declarations (Typer reads signatures)."""

    def completion_only(**_: object) -> None:
        raise RuntimeError("commands run through handyjobs.cli.parse; this app only completes")

    params = [*(_argument(a) for a in cmd.args), *(_option(o) for o in cmd.options)]
    completion_only.__name__ = cmd.name
    completion_only.__doc__ = cmd.help
    completion_only.__annotations__ = {}
    setattr(completion_only, "__signature__", inspect.Signature(params))  # noqa: B010
    return completion_only


def build(names: Sequence[str] = tuple(COMMANDS)) -> typer.Typer:
    """The Typer app of these commands, for completion (Typer's own completion options on)."""
    app = typer.Typer(
        name="handyjobs",
        help="Start PyTorch training jobs on the GPUs you pick, in tmux; see what runs where.",
        add_completion=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )
    for name in names:
        cmd = command(name)
        settings = _PASSTHROUGH if cmd.passthrough else None
        app.command(cmd.name, context_settings=settings)(_callback(cmd))
    return app


def complete(args: Sequence[str] = ()) -> None:
    """Answer the shell's completion request (``_HANDYJOBS_COMPLETE`` is set), or run Typer's
    ``--install-completion`` / ``--show-completion`` (``args``), and exit."""
    root = typer.main.get_command(build())
    root.main(args=list(args), prog_name="handyjobs", complete_var=COMPLETE_VAR)


def show_script(shell: str) -> NoReturn:
    """Print the completion script for ``shell`` and exit: what Typer's ``--show-completion``
    option prints, asked for a given shell rather than the one it detects."""
    root = typer.main.get_command(build())
    show = next(p for p in root.params if p.name == "show_completion")
    typer.completion.show_callback(typer.Context(root, info_name="handyjobs"), show, shell)
    raise SystemExit(0)  # show_callback exits itself; this line is for the type checker
