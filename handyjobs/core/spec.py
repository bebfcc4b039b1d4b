"""Turn what ``handyjobs start`` was asked into a checked :class:`JobSpec`, or one clear error.

Everything here happens before the registry lock is taken: paths, names, the interpreter, the
GPU spec, and the one GPU discovery a start needs (used both to resolve ``--gpus`` and to book).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from handyjobs.core import shell
from handyjobs.core.records import NAME_RE, GpuPolicy, JobSpec, Rendezvous
from handyjobs.errors import UsageError
from handyjobs.structs import Protocol, field, frozen

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from typing import Any

    from handyjobs.gpus.discovery import Discovery

#: The backend of a job that names none: a tmux session on this machine.
LOCAL_BACKEND = "tmux"


class BackendRequest(Protocol):
    """A backend's own part of a start request (its options as typed), checked by that backend.

    It comes from the backend's options (declared in its folder); the core names no backend
    and only asks the part to check itself against the whole request.
    """

    @property
    def backend(self) -> str:
        """The backend it sends the job to."""

    @property
    def submits(self) -> bool:
        """True when the job goes to that backend (its options may be typed without it)."""

    def check(self, req: StartRequest) -> Mapping[str, Any]:
        """Check this part against the whole request; the :class:`JobSpec` fields it fills."""


@frozen
class StartRequest:
    """What ``handyjobs start`` was asked, before any of it is checked."""

    script: str
    args: Sequence[str] = ()
    module: bool = False
    name: str | None = None
    gpus: str | None = None
    ngpus: int | None = None
    cpu: bool = False
    nproc: int | None = None
    env: Sequence[str] = ()
    cwd: str | None = None
    python: str | None = None
    wait: bool = False
    #: Queue it held (``--hold``): the run waits out of the queue until released.
    hold: bool = False
    force: bool = False
    executable: bool = False
    group: str | None = None
    after: Sequence[str] = ()
    after_any: bool = False
    priority: int = 0
    on_exit: str | None = None
    max_restarts: int | None = None
    params: Sequence[tuple[str, str]] = ()
    #: One node of a job on several machines: ``--nnodes``, ``--node-rank``,
    #: ``--rdzv-endpoint``, ``--rdzv-id``.
    nnodes: int | None = None
    node_rank: int | None = None
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None
    #: Limits on this machine as typed (``--time``, ``--mem``, ``--signal-before``).
    time_limit: str | None = None
    mem_limit: str | None = None
    signal_before: int | None = None
    caller_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    #: A backend's own options (a cluster's scheduler), when some were typed.
    backend: BackendRequest | None = None

    @property
    def goes_to(self) -> str:
        """The backend the job goes to: the one its options submit to, else this machine's."""
        if self.backend is not None and self.backend.submits:
            return self.backend.backend
        return LOCAL_BACKEND


def backend_of(reqs: Sequence[StartRequest]) -> str:
    """Where requests started together (a sweep) go: the first one sent elsewhere decides."""
    return next((r.goes_to for r in reqs if r.goes_to != LOCAL_BACKEND), LOCAL_BACKEND)


#: torchrun's port for a c10d endpoint given without one.
DEFAULT_RDZV_PORT = 29400
_RDZV_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HOST_PORT_RE = re.compile(r"^(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>\d{1,5}))?$")


def check_nodes(req: StartRequest) -> Rendezvous | None:
    """One node's part of a multi-node rendezvous (None on one machine); node 0 makes up the
    id that the other nodes are given."""
    given = (req.node_rank, req.rdzv_endpoint, req.rdzv_id)
    if req.nnodes is None:
        if any(v is not None for v in given):
            raise UsageError("--node-rank, --rdzv-endpoint and --rdzv-id go with --nnodes N")
        return None
    if req.nnodes < 2:
        raise UsageError(f"--nnodes {req.nnodes}: give 2 or more (one machine needs no --nnodes)")
    if req.executable:
        raise UsageError("--nnodes runs torchrun; with --exec give your launcher its own options")
    rank = 0 if req.node_rank is None else req.node_rank
    if not 0 <= rank < req.nnodes:
        raise UsageError(
            f"--node-rank {rank}: give 0 to {req.nnodes - 1} for --nnodes {req.nnodes}"
        )
    if not req.rdzv_endpoint:
        raise UsageError(
            "--nnodes needs --rdzv-endpoint HOST:PORT: node 0's address and a free port on it"
        )
    m = _HOST_PORT_RE.match(req.rdzv_endpoint)
    port = int(m.group("port") or DEFAULT_RDZV_PORT) if m else 0
    if m is None or not 0 < port < 65536:
        raise UsageError(
            f"--rdzv-endpoint {req.rdzv_endpoint}: write it as HOST:PORT "
            "(node 0's host name or address, and a free port on it)"
        )
    rdzv_id = req.rdzv_id
    if rdzv_id is None:
        if rank != 0:
            raise UsageError(
                f"--node-rank {rank} needs --rdzv-id: pass the id the start on node 0 printed"
            )
        rdzv_id = os.urandom(4).hex()  # secrets.token_hex's bytes; its import costs 15 ms
    elif not _RDZV_ID_RE.match(rdzv_id):
        raise UsageError(f"--rdzv-id {rdzv_id}: use 1 to 64 of A-Z a-z 0-9 _ -")
    return Rendezvous(req.nnodes, rank, f"{m.group('host')}:{port}", rdzv_id)


@frozen
class Checked:
    """A checked start: the spec, the discovery it was resolved against, the git state."""

    spec: JobSpec
    discovery: Discovery | None
    git: dict[str, object] | None


def check_name(name: str) -> str:
    """A job name as given, or a usage error that says what names look like."""
    if not NAME_RE.match(name):
        raise UsageError(
            f"invalid job name {name!r}: use 1 to 64 of A-Z a-z 0-9 _ -, "
            "starting with a letter or digit (tmux rewrites . and :)"
        )
    return name


def default_stem(script: str, module: bool) -> str:
    """The stem of a default job name: the script's (or module's) last part, cleaned."""
    stem = script.rsplit(".", 1)[-1] if module else Path(script).stem
    clean = "".join(c if c.isalnum() or c in "_-" else "-" for c in stem).strip("-_") or "job"
    return clean[:48]


def find_python(requested: str | None, env: Mapping[str, str], cwd: Path) -> str:
    """The interpreter the job runs with: ``--python``, else ``python`` on the caller's PATH."""
    path = env.get("PATH", os.defpath)
    if requested:
        candidate = Path(requested).expanduser()
        if "/" in requested:
            candidate = candidate if candidate.is_absolute() else cwd / candidate
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        else:
            found = shell.which(requested, path=path)
            if found:
                return found
        raise UsageError(f"--python {requested}: no such executable; give a path or a name on PATH")
    for name in ("python", "python3"):
        found = shell.which(name, path=path)
        if found:
            return found
    return sys.executable


def parse_env(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``--env K=V`` items as sorted pairs; a malformed one is a usage error."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not (key.replace("_", "a").isalnum() and not key[0].isdigit()):
            raise UsageError(f"--env {item!r}: write it as KEY=VALUE, KEY a variable name")
        out[key] = value
    return tuple(sorted(out.items()))


def git_info(directory: Path) -> dict[str, object] | None:
    """Commit and dirty flag of the repository holding the script, when there is one."""
    try:
        head = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(directory), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def caller_cwd(env: Mapping[str, str]) -> str:
    """The caller's directory, spelled as its shell does ($PWD keeps symlinks) when it is one."""
    here = os.getcwd()
    pwd = env.get("PWD")
    try:
        if pwd and os.path.samefile(pwd, here):
            return pwd
    except OSError:
        pass
    return here


def _names(items: Sequence[str], option: str) -> tuple[str, ...]:
    """``--after a,b --after c`` as names, each checked, duplicates once."""
    out: dict[str, None] = {}
    for item in items:
        for name in item.split(","):
            name = name.strip()
            if not name:
                raise UsageError(f"{option} {item!r} has an empty name; give job names: a,b")
            check_name(name)
            out[name] = None
    return tuple(out)


def _command_line(text: str, option: str) -> tuple[str, ...]:
    """A command line split as a shell would (no shell ever runs it)."""
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        raise UsageError(f"{option} {text!r}: {exc}") from None
    if not argv:
        raise UsageError(f"{option} is empty; give the command to run")
    return argv


def _script(req: StartRequest, cwd: Path) -> str:
    """The script, module or command to run, checked; a path is made absolute."""
    shown = req.script
    if req.module:
        if req.executable:
            raise UsageError("-m and --exec both given: run a module, or a command")
        if not req.script or not all(part.isidentifier() for part in req.script.split(".")):
            raise UsageError(f"-m {req.script!r}: not a module name")
        return req.script
    path = Path(req.script).expanduser()
    if req.executable:
        if "/" not in req.script:
            if shell.which(req.script, path=req.caller_env.get("PATH", os.defpath)) is None:
                raise UsageError(f"command {shown} not found on your PATH; give its path")
            return req.script  # looked up on the job's PATH when it starts, as a shell would
        path = path if path.is_absolute() else cwd / path
        if not path.is_file() or not os.access(path, os.X_OK):
            raise UsageError(f"{shown} is not an executable file in {cwd} (chmod +x it?)")
        return str(path)
    path = path if path.is_absolute() else cwd / path
    if not path.is_file():
        raise UsageError(f"script {shown} not found in {cwd}; check the path or --cwd")
    if path.suffix != ".py":
        raise UsageError(
            f"{shown} is not a Python script; to run it as a command, "
            f"`handyjobs start --exec {shown}` (its own shebang, no python in front)"
        )
    return str(path)


def _check_own(req: StartRequest) -> None:
    """The checks of a request's options that need nothing else: names, counts, pairs."""
    if req.name is not None:
        check_name(req.name)
    if req.group is not None:
        check_name(req.group)
    if req.nproc is not None and req.nproc < 1:
        raise UsageError(f"--nproc {req.nproc}: give at least 1 process")
    if req.ngpus is not None and req.ngpus < 1:
        raise UsageError(f"--ngpus {req.ngpus}: ask for at least 1 GPU, or use --cpu")
    if req.cpu and (req.gpus is not None or req.ngpus is not None):
        raise UsageError("--cpu cannot be combined with --gpus/--ngpus; pick one")
    if req.gpus is not None and req.ngpus is not None:
        raise UsageError("--gpus and --ngpus both given; pick GPUs by number or by count")
    if req.force and req.gpus is None:
        raise UsageError("--force overrides checks on GPUs you name: use it with --gpus")
    if req.executable and req.nproc is not None and req.nproc > 1:
        raise UsageError(
            f"--nproc {req.nproc} with --exec: handyjobs runs a command once; let it start its "
            "processes (accelerate launch --num_processes N, torchrun --nproc-per-node N)"
        )
    if req.max_restarts is not None:
        if req.max_restarts < 0:
            raise UsageError(f"--max-restarts {req.max_restarts}: give 0 or more")
        if req.executable:
            raise UsageError("--max-restarts is torchrun's; with --exec pass it to your launcher")


def _cwd(req: StartRequest) -> Path:
    """The job's working directory, absolute; a usage error when it is not a directory."""
    cwd = Path(req.cwd or caller_cwd(req.caller_env)).expanduser()
    if not cwd.is_absolute():
        cwd = Path(os.getcwd()) / cwd
    if not cwd.is_dir():
        raise UsageError(f"--cwd {cwd}: no such directory")
    return cwd


def shown_bytes(text: str) -> str:
    """A string read from the system as its bytes would print (``d\\xff``): a name that is
    not UTF-8 shown without a lone surrogate, which no terminal or JSON file can take."""
    return ascii(os.fsencode(text))[2:-1]


def check_utf8(text: str, what: str, shown: bool = True) -> None:
    """Refuse a string that is not valid UTF-8 (an argument, a path, a variable of bytes the
    system gave us): records are JSON text, and a lone surrogate cannot be saved."""
    try:
        text.encode()
    except UnicodeEncodeError:
        quoted = f" '{shown_bytes(text)}'" if shown else ""
        raise UsageError(
            f"{what}{quoted} is not valid UTF-8; handyjobs records it as text:"
            " rename it, or pass the bytes through a file"
        ) from None


def check_given(args: Sequence[str], env: Sequence[tuple[str, str]]) -> None:
    """The script's arguments and ``--env`` items can be saved as text (start, restart)."""
    for i, arg in enumerate(args, 1):
        check_utf8(arg, f"argument {i}")
    for key, value in env:
        check_utf8(key, "the --env name")
        check_utf8(value, f"the value of --env {key}", shown=False)  # it may be a secret


def _check_text(spec: JobSpec) -> None:
    """Every string of a spec can be saved as text; the first that cannot is named."""
    check_utf8(spec.cwd, "the working folder")
    check_utf8(spec.script, "the script")
    check_utf8(spec.python, "--python")
    check_given(spec.args, spec.env)
    for key, value in spec.params:
        check_utf8(f"{key}={value}", "--grid")
    for word in spec.on_exit:
        check_utf8(word, "--on-exit")


def _resolve_gpus(
    req: StartRequest, policy: GpuPolicy, discovery: Discovery | None
) -> tuple[tuple[int, ...] | None, Discovery | None]:
    """``--gpus`` as indices, checked against the policy, and the discovery that resolved
    them (the start's one discovery, also used to book ``--ngpus``)."""
    if req.gpus is None and req.ngpus is None:
        return None, discovery
    from handyjobs.core import booking
    from handyjobs.gpus import discovery as gpumod  # lazy: only a start that asks for GPUs
    from handyjobs.gpus import select as gpuselect

    tokens = gpuselect.parse_gpu_spec(req.gpus) if req.gpus is not None else None
    if discovery is None:
        discovery = gpumod.discover(req.caller_env)
    if tokens is None:
        return None, discovery
    resolved = tuple(gpuselect.resolve_gpus(tokens, discovery))
    booking.check_allowed(resolved, policy)
    return resolved, discovery


def make_spec(
    req: StartRequest, root: Path | None = None, discovery: Discovery | None = None
) -> Checked:
    """Check a start request and turn it into a spec; every problem is a one-line UsageError.

    Settings come from the environment first, then from the config file under ``root``.
    ``discovery``, when given, is used instead of discovering the GPUs again (a sweep). A
    backend's own part of the request (:class:`BackendRequest`) checks itself and fills its
    fields of the spec.
    """
    from handyjobs.core import booking, config, limits  # lazy: `list` never pays for them

    cwd = _cwd(req)
    _check_own(req)
    after = _names(req.after, "--after")
    if req.after_any and not after:
        raise UsageError("--after-any goes with --after NAME: the jobs to start after")
    rdzv = check_nodes(req)
    env = {**config.load(root).env_defaults(), **req.caller_env}
    script = _script(req, cwd)
    policy = booking.policy_from_env(env)
    on_exit_text = req.on_exit if req.on_exit is not None else env.get(config.ON_EXIT_ENV)
    on_exit = _command_line(on_exit_text, "--on-exit") if on_exit_text else ()
    backend_fields = {} if req.backend is None else dict(req.backend.check(req))
    limit_fields = limits.spec_fields(req)  # before queueing: a limit is never dropped silently
    resolved, discovery = _resolve_gpus(req, policy, discovery)
    spec = JobSpec(
        script=script,
        args=tuple(req.args),
        module=req.module,
        cwd=str(cwd),
        python=find_python(req.python, req.caller_env, cwd),
        gpus=resolved,
        ngpus=req.ngpus,
        cpu=req.cpu,
        nproc=req.nproc,
        env=parse_env(req.env),
        wait=req.wait,
        force=req.force,
        policy=policy,
        executable=req.executable,
        group=req.group,
        after=after,
        after_any=req.after_any,
        priority=req.priority,
        on_exit=on_exit,
        max_restarts=req.max_restarts,
        params=tuple(req.params),
        rdzv=rdzv,
        **backend_fields,
        **limit_fields,
    )
    _check_text(spec)
    where = Path(script).parent if not req.module and "/" in script else cwd
    return Checked(spec, discovery if spec.books_gpus else None, git_info(where))


def sweep_names(
    names_for: Callable[[str], list[str]], stem: str, prefix: str | None, group: str | None
) -> tuple[list[str], str]:
    """A sweep's job names (``names_for(PREFIX)``) and its group.

    Without ``prefix`` a script swept before gets the next number (``train-2-lr1e-3``, in
    group ``train-sweep2``), as pueue and W&B number their runs; names made from a ``prefix``
    the user gave must be free (a usage error names the first that is not). The group is
    ``group``, else one no job uses yet.
    """
    from handyjobs.core import registry  # lazy: only a sweep reads every record here

    records = registry.load_all(None)
    taken = {r.name for r in records}
    if prefix is not None:
        names = names_for(prefix)
        clash = next((name for name in names if name in taken), None)
        if clash is not None:
            raise UsageError(
                f"a job named {clash} exists (an earlier sweep?); pick another --prefix, "
                f"or remove those jobs (`handyjobs rm`)"
            )
    else:
        n = 1
        names = names_for(stem)
        while taken.intersection(names):
            n += 1
            names = names_for(f"{stem[:45]}-{n}")
    if group is not None:
        return names, check_name(group)
    used = {r.spec.group for r in records if r.spec.group}
    base = f"{stem[:50]}-sweep"
    n = 1
    while (base if n == 1 else f"{base}{n}") in used:
        n += 1
    return names, base if n == 1 else f"{base}{n}"
