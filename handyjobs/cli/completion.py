"""``handyjobs completion``: the shell completion script (commands, options, job names)."""

from __future__ import annotations

from typing import Annotated

import typer

from handyjobs.errors import UsageError

COMPLETE_VAR = "_HANDYJOBS_COMPLETE"
SHELLS = ("bash", "zsh", "fish")


def completion(
    shell: Annotated[str, typer.Argument(help="bash, zsh or fish.")],
) -> None:
    """Print the completion script: `eval "$(handyjobs completion bash)"` in ~/.bashrc."""
    if shell not in SHELLS:
        raise UsageError(f"no completion for {shell!r}; pick one of {', '.join(SHELLS)}")
    # Typer generates the scripts (it also answers their requests, through the app).
    from typer._completion_shared import get_completion_script

    print(get_completion_script(prog_name="handyjobs", complete_var=COMPLETE_VAR, shell=shell))
