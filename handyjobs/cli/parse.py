"""Commands as data, read from the command line by click's rules, without importing click.

Each command declares its arguments (:class:`Arg`) and options
(:class:`~handyjobs.core.options.Option`) once, in a :class:`Command`; :func:`parse` reads a
command line the way click (under Typer) did: options before or after the arguments,
``--opt=value`` and ``--opt value``, short flags together (``-mx``), ``--`` ending the options,
and, for a command that passes unknown options on (``start``), every option it does not know
kept in place among the arguments. :func:`help_text` writes ``--help`` from the same data,
and :mod:`handyjobs.cli.app` builds the Typer app that answers shell completion from it.

Why not Typer for every call: measured on Typer 0.29, ``import typer`` alone costs about
1.2 times Python's own start-up, and the pydantic adapter it builds per option per call brought
``handyjobs stop --help`` to 6 times and ``start`` to 9 times ``python -c pass``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from handyjobs.core.options import Option
from handyjobs.errors import UsageError
from handyjobs.structs import field, frozen, mutable

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from typing import Any

#: The help option every command has.
HELP = Option("help", ("--help",), "flag", "Show this message and exit.", default=False)


@frozen
class Arg:
    """One positional argument of a command."""

    name: str
    help: str
    #: Takes every argument left (``NAMES...``); else exactly one.
    many: bool = False
    required: bool = False
    #: What shell completion offers: ``"jobs"`` for job names.
    complete: str = ""

    @property
    def metavar(self) -> str:
        """How usage lines name it: ``SCRIPT``, ``[NAMES]...``."""
        word = self.name.upper()
        shown = word if self.required else f"[{word}]"
        return f"{shown}..." if self.many else shown


@mutable
class Parsed:
    """A command line read by :func:`parse`: every value by name, and which options were typed."""

    values: dict[str, Any]
    #: The options typed, by name, with their values (a default never appears here).
    typed: dict[str, Any] = field(default_factory=dict)
    #: ``--help`` was asked for: nothing else was checked.
    help: bool = False
    #: ``--`` was typed: what follows it is given, even when it is nothing (``edit NAME --``).
    dashdash: bool = False

    def text(self, name: str) -> str | None:
        """A word's value (None when not given)."""
        value = self.values[name]
        assert value is None or isinstance(value, str)
        return value

    def number(self, name: str) -> int | None:
        """An integer's value (None when not given)."""
        value = self.values[name]
        assert value is None or isinstance(value, int)
        return value

    def real(self, name: str) -> float | None:
        """A float's value (None when not given)."""
        value = self.values[name]
        assert value is None or isinstance(value, int | float)
        return value

    def flag(self, name: str) -> bool:
        """A flag's value."""
        return bool(self.values[name])

    def items(self, name: str) -> list[str]:
        """A repeatable option's or a many-argument's values ([] when none)."""
        return list(self.values[name] or [])


@frozen
class Command:
    """A command as data: its name, help, arguments, options, and the function that runs it."""

    name: str
    #: The first line says what it does; the rest of the paragraphs say more in ``--help``.
    help: str
    run: Callable[[Parsed], int | None]
    args: tuple[Arg, ...] = ()
    options: tuple[Option, ...] = ()
    #: Options it does not know go to its arguments as they are (``start``'s script options).
    passthrough: bool = False

    @property
    def summary(self) -> str:
        """The first paragraph of its help, on one line."""
        return " ".join(self.help.strip().split("\n\n")[0].split())


class _Reader:
    """The option-by-option reading of one command line (click's parser, in small)."""

    def __init__(self, cmd: Command) -> None:
        self.cmd = cmd
        self.options = (*cmd.options, HELP)
        self.longs = {f: o for o in self.options for f in o.flags if not _is_short(f)}
        self.shorts = {f[1]: o for o in self.options for f in o.flags if _is_short(f)}
        self.raw: dict[str, list[str] | bool] = {}
        self.positional: list[str] = []
        self.dashdash = False

    def fail(self, message: str) -> UsageError:
        """A usage error that says where help is."""
        return UsageError(f"{message} (see `handyjobs {self.cmd.name} --help`)")

    def read(self, argv: Sequence[str]) -> None:
        """Sort ``argv`` into option values (as typed) and positional arguments."""
        rest = list(argv)
        while rest:
            arg = rest.pop(0)
            if arg == "--":
                self.dashdash = True
                self.positional.extend(rest)
                return
            if arg[:1] != "-" or len(arg) == 1 or _is_number(arg):
                self.positional.append(arg)  # "-5" is a value (a priority), not flags
            elif not self._long(arg, rest):
                self._short(arg, rest)

    def _long(self, arg: str, rest: list[str]) -> bool:
        """Read ``--opt``, ``--opt=value`` or ``--opt value``; False to try short flags."""
        name, eq, explicit = arg.partition("=")
        opt = self.longs.get(name)
        if opt is None:
            if arg[:2] != "--":
                return False  # "-mx": short flags together
            if not self.cmd.passthrough:
                raise self.fail(f"No such option: {name}{_did_you_mean(name, self.longs)}")
            self.positional.append(arg)
            return True
        if not opt.takes_value:
            if eq:
                raise self.fail(f"Option '{name}' does not take a value.")
            self.raw[opt.name] = True
            return True
        if eq:
            rest.insert(0, explicit)
        self._value(opt, name, rest)
        return True

    def _short(self, arg: str, rest: list[str]) -> None:
        """Read ``-m``, ``-mx``, ``-n5``; unknown letters go on as one argument (passthrough)."""
        unknown = []
        for i, letter in enumerate(arg[1:], start=2):
            opt = self.shorts.get(letter)
            if opt is None:
                if not self.cmd.passthrough:
                    raise self.fail(f"No such option: -{letter}")
                unknown.append(letter)
                continue
            if not opt.takes_value:
                self.raw[opt.name] = True
                continue
            if i < len(arg):
                rest.insert(0, arg[i:])  # "-n5": the rest of the word is the value
            self._value(opt, f"-{letter}", rest)
            break
        if unknown:
            self.positional.append("-" + "".join(unknown))

    def _value(self, opt: Option, name: str, rest: list[str]) -> None:
        """The next word is the option's value, whatever it looks like (as click takes it)."""
        if not rest:
            raise self.fail(f"Option '{name}' requires an argument.")
        value = rest.pop(0)
        if opt.kind == "list":
            listed = self.raw.setdefault(opt.name, [])
            assert isinstance(listed, list)
            listed.append(value)
        else:
            self.raw[opt.name] = [value]


def _is_number(arg: str) -> bool:
    """``-5``, ``-0.5``: a negative number, which no option's letters spell."""
    try:
        float(arg)
    except ValueError:
        return False
    return True


def _is_short(flag: str) -> bool:
    return len(flag) == 2 and flag[0] == "-" and flag[1] != "-"


def _did_you_mean(name: str, longs: dict[str, Option]) -> str:
    import difflib  # lazy: only on this error's path

    close = difflib.get_close_matches(name, list(longs))
    return f"; did you mean {close[0]}?" if close else ""


_KINDS: dict[str, tuple[Callable[[str], Any], str]] = {
    "int": (int, "integer"),
    "float": (float, "number"),
}


def _convert(reader: _Reader, opt: Option, raw: list[str] | bool) -> Any:
    """The typed value of an option as read (a flag's True, a number, words)."""
    if isinstance(raw, bool) or opt.kind == "list":
        return raw
    if opt.kind not in _KINDS:
        return raw[-1]
    kind, noun = _KINDS[opt.kind]
    try:
        return kind(raw[-1])
    except ValueError:
        raise reader.fail(
            f"Invalid value for '{opt.flags[-1]}': {raw[-1]!r} is not a valid {noun}."
        ) from None


def _arguments(reader: _Reader) -> dict[str, Any]:
    """The positional arguments shared out among the declared ones, in order."""
    words = list(reader.positional)
    out: dict[str, Any] = {}
    for arg in reader.cmd.args:
        if arg.many:
            out[arg.name], words = words, []
        else:
            out[arg.name] = words.pop(0) if words else None
        if arg.required and out[arg.name] in (None, []):
            raise reader.fail(f"Missing argument '{arg.name.upper()}'.")
    if words:
        extra = "argument" if len(words) == 1 else "arguments"
        raise reader.fail(f"Got unexpected extra {extra} ({' '.join(words)})")
    return out


def parse(cmd: Command, argv: Sequence[str]) -> Parsed:
    """Read ``argv`` (what follows the command's name) by the command's declarations.

    Every problem is a one-line :class:`UsageError` (exit code 2). ``--help`` wins over every
    problem but a malformed option, as with click.
    """
    reader = _Reader(cmd)
    reader.read(argv)
    if reader.raw.pop("help", False):
        return Parsed({}, help=True)
    values: dict[str, Any] = {opt.name: opt.default for opt in cmd.options}
    typed = {}
    for opt in cmd.options:
        if opt.name in reader.raw:
            values[opt.name] = typed[opt.name] = _convert(reader, opt, reader.raw[opt.name])
    values.update(_arguments(reader))
    return Parsed(values, typed, dashdash=reader.dashdash)


def _option_label(opt: Option) -> str:
    label = ", ".join(opt.flags)
    return f"{label} {opt.metavar or opt.kind.upper()}" if opt.takes_value else label


def _rows(rows: list[tuple[str, str]], width: int) -> list[str]:
    """Two columns, the second wrapped (click's layout)."""
    import textwrap  # lazy: only --help formats text

    left = min(max(len(label) for label, _ in rows), 30) + 2
    out = []
    for label, text in rows:
        lines = textwrap.wrap(text, max(width - left - 2, 20)) or [""]
        if len(label) + 2 > left:
            out.append(f"  {label}")
            out += [" " * (left + 2) + line for line in lines]
            continue
        out.append(f"  {label:<{left}}{lines[0]}")
        out += [" " * (left + 2) + line for line in lines[1:]]
    return out


#: The first line of ``handyjobs`` alone and of ``handyjobs --help``.
USAGE = "usage: handyjobs COMMAND [ARGS]..."


def short_text(names: Sequence[str], width: int = 80) -> str:
    """``handyjobs`` alone: the commands' names, and where to read more (a screen at most)."""
    import textwrap  # lazy: only help formats text

    listed = textwrap.wrap(
        " ".join(names), width - 2, initial_indent="commands: ", subsequent_indent="  "
    )
    more = "`handyjobs --help` says what each does; `handyjobs COMMAND --help` says more."
    return "\n".join([USAGE, "", *listed, "", more]) + "\n"


def usage_words(cmd: Command) -> str:
    """How the overview names a command and its arguments: ``stop [NAMES]...``."""
    return " ".join([cmd.name, *(a.metavar for a in cmd.args)])


def overview_text(cmds: Sequence[Command], width: int = 80) -> str:
    """``handyjobs --help``: every command with the first line of its own help, whole (wrapped,
    never cut), then the options of ``handyjobs`` itself."""
    rows = [(usage_words(cmd), cmd.summary) for cmd in cmds]
    own = [
        ("--version, -V", "Print the version and exit."),
        ("--help", "Show this message and exit."),
        ("--install-completion", "Install shell completion for the current shell."),
        ("--show-completion", "Print shell completion for the current shell."),
    ]
    out = [USAGE, "", "Commands:", *_rows(rows, width)]
    out += ["", "Options:", *_rows(own, width), ""]
    out.append("`handyjobs COMMAND --help` says more about each command.")
    return "\n".join(out) + "\n"


def help_text(cmd: Command, width: int = 80) -> str:
    """``handyjobs COMMAND --help``: usage, what it does, its arguments and options."""
    import textwrap  # lazy: only --help formats text

    usage = " ".join(["Usage: handyjobs", cmd.name, "[OPTIONS]", *(a.metavar for a in cmd.args)])
    out = [usage, ""]
    for para in cmd.help.strip().split("\n\n"):
        out += textwrap.wrap(
            " ".join(para.split()), width - 2, initial_indent="  ", subsequent_indent="  "
        )
        out.append("")
    if cmd.args:
        rows = [
            (a.metavar.strip("[]."), a.help + (" [required]" if a.required else ""))
            for a in cmd.args
        ]
        out += ["Arguments:", *_rows(rows, width), ""]
    sections: dict[str, list[tuple[str, str]]] = {}
    for opt in (*cmd.options, HELP):
        quiet = opt.default is None or opt.default is False or opt.default == ""
        shown = "" if quiet else f"  [default: {opt.default}]"
        sections.setdefault(opt.section, []).append((_option_label(opt), opt.help + shown))
    for title, rows in sections.items():
        out += [f"{title or 'Options'}:", *_rows(rows, width), ""]
    if cmd.passthrough:
        out += textwrap.wrap(
            "Options it does not know, and everything after --, go to the script as they are.",
            width - 2,
            initial_indent="  ",
            subsequent_indent="  ",
        )
    return "\n".join(out).rstrip() + "\n"
