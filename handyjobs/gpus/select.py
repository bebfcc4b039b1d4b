"""``--gpus`` and ``HANDYJOBS_GPUS`` parsed and resolved against what was found: indices, UUIDs."""

from __future__ import annotations

import re
from collections.abc import Sequence

from handyjobs.errors import UsageError
from handyjobs.gpus.model import Discovery

_INDEX_RE = re.compile(r"[0-9]+")
# GPU-<uuid>, MIG-<uuid> and the older MIG-GPU-<uuid>/<gi>/<ci>; fake files use GPU-fake-<n>.
_UUID_RE = re.compile(r"(GPU|MIG)-[A-Za-z0-9_/-]+")


def parse_gpu_spec(text: str, *, source: str = "--gpus") -> list[str]:
    """Split a GPU spec such as "2,4" or "GPU-8f3a...,1" into index and UUID tokens."""
    hint = "give GPU indices or UUIDs separated by commas, such as 0,1 (see `handyjobs gpus`)"
    if not text.strip():
        raise UsageError(f"{source} is empty; {hint}")
    tokens: list[str] = []
    seen: dict[str, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        if _INDEX_RE.fullmatch(item):
            token = str(int(item))  # "02" and "2" are the same GPU
            key = token
        elif _UUID_RE.fullmatch(item):
            token = item
            key = item.lower()
        elif not item:
            raise UsageError(f"{source} {text!r} has an empty item; {hint}")
        else:
            raise UsageError(f"{source} {text!r}: {item!r} is not a GPU index or UUID; {hint}")
        if key in seen:
            raise UsageError(f"{source} {text!r} names GPU {item} twice; give each GPU once")
        seen[key] = item
        tokens.append(token)
    return tokens


def resolve_gpus(tokens: Sequence[str], discovery: Discovery) -> list[int]:
    """Map index and UUID tokens to GPU indices that exist, in the order given."""
    if not discovery.gpus:
        why = f" ({discovery.note})" if discovery.note else ""
        raise UsageError(f"no NVIDIA GPU found{why}; use --cpu to run on the CPU")
    by_index = discovery.by_index()
    by_uuid = {g.uuid.lower(): g.index for g in discovery.gpus}
    have = f"this machine has {_plural_gpus(sorted(by_index))} (see `handyjobs gpus`)"
    indices: list[int] = []
    missing: list[str] = []
    for token in tokens:
        if _INDEX_RE.fullmatch(token):
            index = int(token)
            if index in by_index:
                indices.append(index)
            else:
                missing.append(str(index))
        elif token.lower() in by_uuid:
            indices.append(by_uuid[token.lower()])
        elif token.upper().startswith("MIG-"):
            # handyjobs schedules whole GPUs; GpuInfo does not list MIG instances
            raise UsageError(
                f"{token} is a MIG instance, which handyjobs cannot schedule; "
                f"give the index of a whole GPU instead ({have})"
            )
        else:
            missing.append(token)
    if missing:
        if len(missing) == 1:
            raise UsageError(f"GPU {missing[0]} does not exist; {have}")
        raise UsageError(f"GPUs {', '.join(missing)} do not exist; {have}")
    dupes = sorted({i for i in indices if indices.count(i) > 1})
    if dupes:
        raise UsageError(
            f"GPU {dupes[0]} is named twice (by index and by UUID); give each GPU once"
        )
    return indices


def _plural_gpus(indices: Sequence[int]) -> str:
    """Return "GPU 0" or "GPUs 0-3,5" for sorted indices."""
    if len(indices) == 1:
        return f"GPU {indices[0]}"
    return f"GPUs {format_indices(indices)}"


def format_indices(indices: Sequence[int]) -> str:
    """Return sorted indices compactly, with runs as ranges: [0, 1, 2, 3, 5] -> "0-3,5"."""
    parts: list[str] = []
    ordered = sorted(set(indices))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)
