"""``handyjobs completion``: the shell completion script (commands, options, job names)."""

from __future__ import annotations

from handyjobs.cli.parse import Arg, Command, Parsed
from handyjobs.errors import UsageError

SHELLS = ("bash", "zsh", "fish")


def _run(p: Parsed) -> None:
    shell = p.text("shell")
    if shell not in SHELLS:
        raise UsageError(f"no completion for {shell!r}; pick one of {', '.join(SHELLS)}")
    # Typer writes the script (and answers it): imported only here, for start-up.
    from handyjobs.cli import app

    app.show_script(shell)


COMMAND = Command(
    "completion",
    'Print the completion script: `eval "$(handyjobs completion bash)"` in ~/.bashrc.',
    _run,
    args=(Arg("shell", "bash, zsh or fish.", required=True),),
)
