"""The testing seam: ``HANDYJOBS_FAKE_GPUS`` names a JSON file of canned GPUs, read afresh on
every look (a test rewrites it to free a GPU); never consulted unless the variable is set.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from handyjobs.errors import UsageError
from handyjobs.gpus.model import Discovery, GpuInfo, GpuProcess
from handyjobs.gpus.pidinfo import with_proc_info

FAKE_ENV = "HANDYJOBS_FAKE_GPUS"


def read_fake(path: str) -> Discovery:
    """Read a fake GPU file (the testing seam); a missing or malformed file is a UsageError."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise UsageError(
            f"{FAKE_ENV}={path}: cannot read it ({e.strerror}); "
            f"point it at a JSON file of fake GPUs or unset it"
        ) from e
    except ValueError as e:
        raise UsageError(
            f"{FAKE_ENV}={path}: not valid JSON ({e}); fix the file or unset {FAKE_ENV}"
        ) from e
    try:
        gpus = _fake_gpus(data)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{FAKE_ENV}={path}: {e}; fix the file or unset {FAKE_ENV}") from e
    comparable = data.get("pids_comparable", True) if isinstance(data, dict) else True
    if not isinstance(comparable, bool):
        raise UsageError(
            f"{FAKE_ENV}={path}: pids_comparable must be true or false, not {comparable!r}; "
            f"fix the file or unset {FAKE_ENV}"
        )
    return Discovery("fake", gpus, pids_comparable=comparable)


def _fake_gpus(data: object) -> tuple[GpuInfo, ...]:
    """Validate the parsed fake file and build its GPUs, sorted by index."""
    if not isinstance(data, dict) or not isinstance(data.get("gpus"), list):
        raise ValueError('expected an object {"gpus": [...]}')
    gpus: dict[int, GpuInfo] = {}
    for i, raw in enumerate(data["gpus"]):
        where = f"gpus[{i}]"
        if not isinstance(raw, dict):
            raise ValueError(f"{where} is not an object")
        index = _req_int(raw, "index", where)
        if index in gpus:
            raise ValueError(f"{where}: index {index} appears twice")
        raw_procs = raw.get("processes", [])
        if not isinstance(raw_procs, list):
            raise ValueError(f"{where}.processes is not a list")
        procs = []
        for j, rp in enumerate(raw_procs):
            pwhere = f"{where}.processes[{j}]"
            if not isinstance(rp, dict):
                raise ValueError(f"{pwhere} is not an object")
            pid = _req_int(rp, "pid", pwhere)
            proc = GpuProcess(
                pid=pid,
                used_memory_mib=_opt_int(rp, "used_memory_mib", pwhere),
                user=_opt_str(rp, "user", pwhere),
                name=_opt_str(rp, "name", pwhere),
            )
            procs.append(with_proc_info(proc))
        uuid = _opt_str(raw, "uuid", where) or f"GPU-fake-{index}"
        name = _opt_str(raw, "name", where)
        if name is None:
            raise ValueError(f"{where}.name is missing")
        gpus[index] = GpuInfo(
            index=index,
            uuid=uuid,
            name=name,
            memory_used_mib=_req_int(raw, "memory_used_mib", where),
            memory_total_mib=_req_int(raw, "memory_total_mib", where),
            utilization_pct=_opt_int(raw, "utilization_pct", where),
            processes=tuple(procs),
            mig=_opt_bool(raw, "mig", where),
            error=_opt_str(raw, "error", where),
        )
    return tuple(gpus[k] for k in sorted(gpus))


def _opt_bool(raw: Mapping[str, object], key: str, where: str) -> bool:
    """Return an optional boolean field of a fake-file object (absent: False)."""
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{where}.{key} must be true or false, not {value!r}")
    return value


def _req_int(raw: Mapping[str, object], key: str, where: str) -> int:
    """Return a required non-negative integer field of a fake-file object."""
    value = _opt_int(raw, key, where)
    if value is None:
        raise ValueError(f"{where}.{key} is missing")
    return value


def _opt_int(raw: Mapping[str, object], key: str, where: str) -> int | None:
    """Return an optional non-negative integer field of a fake-file object."""
    value = raw.get(key)
    if value is None:
        return None
    # bool is an int subclass; true/false in the file is a mistake, not 1/0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}.{key} must be a non-negative integer, not {value!r}")
    return value


def _opt_str(raw: Mapping[str, object], key: str, where: str) -> str | None:
    """Return an optional string field of a fake-file object."""
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key} must be a string, not {value!r}")
    return value
