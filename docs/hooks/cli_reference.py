"""MkDocs hook: writes the command reference from the CLI's own declarations at every build.

Each command's page section comes from its ``COMMAND`` (``handyjobs/cli/``, listed in
``cli/commands.py``), whose options come from ``core/options.py`` and the backends' option
modules, and its ``--help`` text is the one the CLI prints: the reference cannot differ from
the CLI, and nobody edits it by hand (it is never a file in ``docs/``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # MkDocs is the docs extra's: the page itself is written without it
    from mkdocs.structure.files import Files

#: Where the generated page lives in the site (``mkdocs.yml``'s nav names it).
PAGE = "reference/commands.md"


def _escape(text: str) -> str:
    """Text from a declaration, safe inside Markdown (no stray HTML)."""
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _command_section(name: str) -> list[str]:
    """One command: its summary, its --help as printed, its arguments and options."""
    from handyjobs.cli.commands import command  # lazy: the build imports the CLI only here
    from handyjobs.cli.parse import HELP, help_text

    cmd = command(name)
    out = [f"## `handyjobs {name}`", "", _escape(cmd.summary), "", "```text"]
    out += [help_text(cmd, width=100).rstrip("\n"), "```", ""]
    if cmd.args:
        out += ["Arguments:", ""]
        for arg in cmd.args:
            need = " (required)" if arg.required else ""
            out.append(f"- `{arg.metavar}`: {_escape(arg.help)}{need}")
        out.append("")
    sections: dict[str, list[str]] = {}
    for opt in (*cmd.options, HELP):
        value = f" {opt.metavar or opt.kind.upper()}" if opt.takes_value else ""
        quiet = opt.default is None or opt.default is False or opt.default == ""
        default = "" if quiet else f" (default: `{opt.default}`)"
        line = f"- `{', '.join(opt.flags)}{value}`: {_escape(opt.help)}{default}"
        sections.setdefault(opt.section or "Options", []).append(line)
    for title, lines in sections.items():
        out += [f"{_escape(title)}:", "", *lines, ""]
    return out


def reference_markdown() -> str:
    """The whole page: every command of ``COMMANDS``, in the order ``handyjobs --help`` lists."""
    from handyjobs.cli.commands import COMMANDS  # lazy: the build imports the CLI only here

    out = [
        "# Commands and options",
        "",
        "Written at every build from the commands' own declarations (`handyjobs/cli/`), the",
        "same data that parses a command line and prints `--help`: what you read here is what",
        "the installed CLI accepts. Exit codes are in [Exit codes](exit-codes.md).",
        "",
    ]
    out += [f"- [`{name}`](#handyjobs-{name})" for name in COMMANDS]
    out.append("")
    for name in COMMANDS:
        out += _command_section(name)
    return "\n".join(out) + "\n"


def on_files(files: Files, config: Any) -> Files:
    """Add the generated reference page to the site's files."""
    from mkdocs.structure.files import File  # lazy: only a site build has MkDocs

    files.append(File.generated(config, PAGE, content=reference_markdown()))
    return files
