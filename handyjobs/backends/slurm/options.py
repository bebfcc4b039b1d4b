"""Slurm's options of ``start`` and ``sweep``, declared once in the shape of the core's table.

The CLI merges :data:`OPTIONS` into ``start``'s and ``sweep``'s (see
:mod:`handyjobs.core.options`); :func:`request` turns the ones typed into the request's Slurm
part (:class:`~handyjobs.backends.slurm.sbatch.SlurmRequest`, checked by sbatch), and
:func:`like` is ``start --like``'s Slurm side. The options are named as sbatch names them.
"""

from __future__ import annotations

from collections.abc import Mapping

from handyjobs.core.options import Option, option, request_fields
from handyjobs.structs import fields, replace

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from typing import Any

    from handyjobs.backends.slurm.sbatch import SlurmRequest
    from handyjobs.core.options import Kind
    from handyjobs.core.records import JobSpec
    from handyjobs.core.spec import StartRequest

SECTION = "Slurm (with --slurm)"


def _slurm(flags: str, kind: Kind, metavar: str, help: str, field: str = "") -> Option:
    """A Slurm option: it fills the :class:`SlurmRequest` field of its own name unless told."""
    made = option(flags, kind, metavar, help, sweep=True, section=SECTION)
    return replace(made, field=field or made.name)


#: Slurm's options, in the order ``--help`` lists them.
# fmt: off
OPTIONS: tuple[Option, ...] = (
    _slurm("--slurm", "flag", "", "Submit to Slurm (sbatch).", field="submit"),
    _slurm("--nodes", "int", "N", "Slurm: nodes."),
    _slurm("--gpus-per-node", "int", "G", "Slurm: GPUs per node."),
    _slurm("--partition", "str", "P", "Slurm: partition."),
    _slurm("--account", "str", "A", "Slurm: account."),
    _slurm("--constraint", "str", "C", "Slurm: node features."),
    _slurm("--slurm-arg", "list", "OPT", "Slurm: any sbatch option, --slurm-arg=--qos=high.",
           field="extra"),
    _slurm("--requeue", "flag", "", "Slurm: requeue after the time-limit warning."),
    _slurm("--cpus-per-gpu", "int", "N",
           "Slurm: CPUs per GPU (default: the node's CPUs over its GPUs)."),
    _slurm("--mem-per-gpu", "str", "M", "Slurm: memory per GPU, e.g. 32G."),
    _slurm("--setup", "list", "LINE", "Slurm: a shell line run before the job, e.g. "
           "'module load cuda/12.4' (repeatable)."),
    _slurm("--srun-opt", "list", "OPT", "Slurm: an srun option, --srun-opt=--container-image=IMG "
           "(repeatable).", field="srun_opts"),
)
# fmt: on

_NAMES = frozenset(opt.name for opt in OPTIONS)
#: Options of the core's table (limits a job has on this machine too) that mean Slurm's own
#: with --slurm: option name -> the SlurmRequest field.
SHARED = {"time": "time", "mem": "mem", "signal_before": "signal_before_s"}


def _none() -> SlurmRequest:
    """No Slurm option typed."""
    # Imported here: every start parses with OPTIONS, and a start on this machine never needs
    # sbatch's module (its import is start-up time for nothing).
    from handyjobs.backends.slurm.sbatch import SlurmRequest

    return SlurmRequest(submit=False)


def _typed(base: SlurmRequest, given: Mapping[str, object]) -> SlurmRequest | None:
    """``base`` changed by the Slurm options typed; None when that leaves no Slurm option."""
    changes: dict[str, Any] = request_fields(OPTIONS, {k: given[k] for k in _NAMES & set(given)})
    if base.submit or given.get("slurm"):  # else they are this machine's limits
        changes.update({field: given[name] for name, field in SHARED.items() if name in given})
    for key in ("extra", "setup", "srun_opts"):  # lists typed, kept as tuples
        if key in changes:
            changes[key] = tuple(changes[key])
    merged = replace(base, **changes)
    return None if merged == _none() else merged


def request(given: Mapping[str, object]) -> SlurmRequest | None:
    """The Slurm part of a request from the options typed (by name); None when none was.

    Slurm options typed without ``--slurm`` make a part that does not submit: checking it says
    "add --slurm".
    """
    if not _NAMES & set(given):
        return None  # no Slurm option typed: nothing of Slurm's to load
    return _typed(_none(), given)


def from_spec(spec: JobSpec) -> SlurmRequest | None:
    """The Slurm options that would make this spec's Slurm part again (the fields share names)."""
    if spec.slurm is None:
        return None
    slurm = spec.slurm
    return replace(_none(), submit=True, **{f.name: getattr(slurm, f.name) for f in fields(slurm)})


def like(base: StartRequest, spec: JobSpec, given: Mapping[str, object]) -> StartRequest:
    """``start --like``'s Slurm side: a Slurm job goes to Slurm again, with the Slurm options
    typed changed; a job of this machine goes there when ``--slurm`` is typed, asking for as
    many GPUs per node as it had here (unless told), without this machine's GPU picks, queue
    waiting and priority."""
    part = _typed(from_spec(spec) or _none(), given)
    base = replace(base, backend=part)
    if part is None or not part.submit or spec.slurm is not None:
        return base
    count = len(spec.gpus) if spec.gpus else (spec.ngpus or None)
    if count and not ("gpus_per_node" in given or "cpu" in given):
        part = replace(part, gpus_per_node=count)
    return replace(base, backend=part, gpus=None, ngpus=None, wait=False, force=False, priority=0)
