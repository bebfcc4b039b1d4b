"""The options of ``handyjobs start`` as data, each declared once.

An :class:`Option` says how it is typed (flags, kind, default, help), which field of the
:class:`~handyjobs.core.spec.StartRequest` it fills, whether ``--like`` copies that field from
the other job's spec, and whether ``sweep`` takes it. From :data:`START_OPTIONS` the CLI
derives the options of ``start`` and ``sweep`` and their help, the request (:func:`request`)
and ``--like`` (:func:`request_from_spec`). A backend declares its own options in its folder,
in the same shape, with a :class:`BackendOptions` module that turns them into its part of the
request; the CLI merges them in. Other commands declare their options in this shape too.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Mapping

from handyjobs.errors import UsageError
from handyjobs.structs import Protocol, frozen, replace

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from typing import Any, Literal, TypeAlias

    from handyjobs.core.records import JobSpec
    from handyjobs.core.spec import BackendRequest, StartRequest

    #: How a value is typed: a flag (no value), a number, a word, or a word that may repeat.
    Kind: TypeAlias = Literal["flag", "int", "float", "str", "list"]
    #: What ``--like`` does with the field: copies it from the other job's spec (a value typed
    #: now replaces it), copies it and adds the values typed now, or leaves it to what is typed
    #: now.
    Like: TypeAlias = Literal["copy", "add", ""]


@frozen
class Option:
    """One command-line option, declared once: how it is typed and what it fills."""

    #: The Python name of its value (``after_any``), unique within a command.
    name: str
    #: What is typed: ``("-m", "--module")``; the long form last.
    flags: tuple[str, ...]
    kind: Kind
    help: str
    #: The value when it is not typed (flags: False; others None unless said).
    default: Any = None
    #: How help names the value (``N``, ``NAME``).
    metavar: str = ""
    #: The request field it fills; None for an option of the command itself (``--attach``).
    field: str | None = None
    #: Request fields it also sets, to these values, when it is typed.
    sets: tuple[tuple[str, object], ...] = ()
    like: Like = ""
    #: The spec's value (of the field of the same name) as this option would type it.
    from_spec: Callable[[Any], object] | None = None
    #: ``sweep`` takes it too.
    sweep: bool = False
    #: The heading it is listed under in ``--help`` ("" for the command's own options).
    section: str = ""
    #: What shell completion offers for its value: ``"jobs"`` for job names.
    complete: str = ""

    @property
    def takes_value(self) -> bool:
        """True unless the option is a flag."""
        return self.kind != "flag"


class BackendOptions(Protocol):
    """A backend's own options of ``start`` and ``sweep`` (a module in the backend's folder)."""

    #: Its options, in the table's shape.
    OPTIONS: tuple[Option, ...]

    def request(self, given: Mapping[str, object]) -> BackendRequest | None:
        """Its part of a request from the options typed (by name); None when none of its own."""

    def like(self, base: StartRequest, spec: JobSpec, given: Mapping[str, object]) -> StartRequest:
        """A ``--like`` request: its part from the other job's spec, changed by what is typed."""


def option(flags: str, kind: Kind, metavar: str, help: str, **more: Any) -> Option:
    """An option from its flags (``"-m --module"``), kind, metavar and help, named after its
    long flag (``--after-any``: ``after_any``) unless ``name`` is given."""
    names = tuple(flags.split())
    more.setdefault("name", names[-1].lstrip("-").replace("-", "_"))
    if kind == "flag":
        more.setdefault("default", False)
    return Option(flags=names, kind=kind, help=help, metavar=metavar, **more)


def _opt(flags: str, kind: Kind, metavar: str, help: str, **more: Any) -> Option:
    """An option of ``start``; it fills the request field of its own name unless told."""
    made = option(flags, kind, metavar, help, **more)
    return made if "field" in more else replace(made, field=made.name)


def _gpus_text(gpus: tuple[int, ...] | None) -> str | None:
    return None if gpus is None else ",".join(map(str, gpus))


def _env_items(env: tuple[tuple[str, str], ...]) -> list[str]:
    return [f"{key}={value}" for key, value in env]


def _command_text(argv: tuple[str, ...]) -> str | None:
    return shlex.join(argv) if argv else None


def _bytes_text(value: int | None) -> str | None:
    return None if value is None else str(value)  # ``--mem`` takes a plain number of bytes


def _seconds_text(value: int | None) -> str | None:
    return None if value is None else f"{value}s"


#: What ``--like`` does with each field of the table below (see :data:`Like`).
C: Like = "copy"
A: Like = "add"

#: Seconds ``stop`` (and ``restart``) wait after SIGTERM before they SIGKILL what is left.
STOP_GRACE_S = 10.0
#: What ``edit`` may change of a queued job, by the name of its ``start`` option.
EDIT_OPTIONS = ("gpus", "ngpus", "env", "priority", "after", "after_any")

#: ``start``'s options, in the order ``--help`` lists them.
# fmt: off
START_OPTIONS: tuple[Option, ...] = (
    _opt("--gpus", "str", "LIST", "GPUs by nvidia-smi index or UUID: 2,4",
         like=C, from_spec=_gpus_text, sweep=True),
    _opt("--ngpus", "int", "N", "Any N free GPUs.", like=C, sweep=True),
    _opt("--cpu", "flag", "", "Run on the CPU (gloo for DDP).", like=C, sweep=True),
    _opt("--nproc", "int", "N", "Processes (default: one per GPU).", like=C, sweep=True),
    _opt("--name", "str", "NAME", "Job and tmux session name."),
    _opt("--env", "list", "K=V", "Extra KEY=VALUE for the job (repeatable).",
         like=A, from_spec=_env_items, sweep=True),
    _opt("--cwd", "str", "DIR", "Working directory of the job.", like=C, sweep=True),
    _opt("-m --module", "flag", "", "SCRIPT is a module.", like=C, sweep=True),
    _opt("-x --exec", "flag", "", "SCRIPT is a command, run as it is (no python).",
         name="exec_", field="executable", like=C, sweep=True),
    _opt("--python", "str", "PATH", "Python to run the job with.", like=C, sweep=True),
    _opt("--wait", "flag", "", "Queue until the GPUs are free.", like=C),
    _opt("--hold", "flag", "", "Queue it held: it starts only after `handyjobs release`.",
         sweep=True),
    _opt("--force", "flag", "", "Use GPUs even if busy.", like=C),
    _opt("--group", "str", "GROUP", "Put the job in a group (list/stop/wait it).", like=C),
    _opt("--after", "list", "NAMES", "Start after these jobs succeed: NAME[,NAME...]",
         sets=(("after_any", False),), like=C, from_spec=list, sweep=True, complete="jobs"),
    _opt("--after-any", "list", "NAMES", "Start after these jobs end, whatever their outcome.",
         field="after", sets=(("after_any", True),), like=C, from_spec=list, sweep=True,
         complete="jobs"),
    _opt("--priority", "int", "N", "Higher goes first in the queue.", default=0, like=C,
         sweep=True),
    _opt("--on-exit", "str", "CMD", "Command to run when the job ends (no shell; see the docs).",
         like=C, from_spec=_command_text, sweep=True),
    _opt("--max-restarts", "int", "N", "torchrun's elastic restarts.", like=C),
    # Limits, enforced here by the runner; a job sent to a cluster gives them to its scheduler.
    _opt("--time", "str", "T", "Time limit: 2h30m, 90m, 45s, 1:30:00 or minutes; the job is "
         "stopped at it and fails (on a cluster: its scheduler's limit).", field="time_limit",
         like=C, from_spec=_seconds_text, sweep=True),
    _opt("--mem", "str", "SIZE", "Memory limit of the whole run (its cgroup): 16G, 512M (on a "
         "cluster: its scheduler's, per node).", field="mem_limit", like=C,
         from_spec=_bytes_text, sweep=True),
    _opt("--signal-before", "int", "S", "SIGUSR1 this many s before --time's limit (default "
         "60, at most half the limit).", like=C, sweep=True),
    _opt("--like", "str", "NAME", "Start from another job's spec, with these changes.",
         field=None, complete="jobs"),
    _opt("--nnodes", "int", "N", "Machines the job spans (start it on each one)."),
    _opt("--node-rank", "int", "R", "This machine's place: 0 hosts the rendezvous."),
    _opt("--rdzv-endpoint", "str", "HOST:PORT", "Where the nodes meet, on node 0."),
    _opt("--rdzv-id", "str", "ID", "The id node 0's start printed (other nodes)."),
    _opt("--attach", "flag", "", "Attach to it at once.", field=None),
    _opt("--follow", "flag", "", "Follow its log to the end.", field=None),
)
# fmt: on


def request_fields(table: Iterable[Option], given: Mapping[str, object]) -> dict[str, object]:
    """The request fields that the options typed (``given``: name -> value) fill."""
    by_name = {opt.name: opt for opt in table}
    if given.get("after") and given.get("after_any"):
        raise UsageError("--after and --after-any both given: pick one way to wait for jobs")
    out: dict[str, object] = {}
    for name, value in given.items():
        opt = by_name.get(name)
        if opt is None or opt.field is None:
            continue
        out[opt.field] = value
        out.update(opt.sets)
    return out


def request(
    base: StartRequest, given: Mapping[str, object], table: Iterable[Option] = START_OPTIONS
) -> StartRequest:
    """``base`` changed by the options typed; a list ``--like`` adds to (``--env``) grows."""
    options = list(table)
    fields: dict[str, Any] = request_fields(options, given)
    for opt in options:
        if opt.like == "add" and opt.field in fields:
            fields[opt.field] = [*getattr(base, opt.field), *fields[opt.field]]
    return replace(base, **fields)


def request_from_spec(spec: JobSpec, table: Iterable[Option] = START_OPTIONS) -> StartRequest:
    """The request that would make this spec again: what ``--like`` starts from."""
    # Imported here: every command parses with this module's Option, and only a start needs
    # the request (the spec module costs `list` a few ms of start-up).
    from handyjobs.core.spec import StartRequest

    fields: dict[str, Any] = {}
    for opt in table:
        if not opt.like or opt.field is None:
            continue
        value = getattr(spec, opt.field)
        fields[opt.field] = value if opt.from_spec is None else opt.from_spec(value)
        for also, _ in opt.sets:
            fields[also] = getattr(spec, also)
    return StartRequest(script=spec.script, args=list(spec.args), **fields)
