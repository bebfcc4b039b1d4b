"""What Slurm last answered (``squeue``), and since when it has not: in memory and in a file.

One ``squeue`` answer serves every job of a command, and, through ``slurm-squeue.json`` in the
state folder, every command within the cache time. When the controller does not answer, that
is kept too, with the time of the last answer: the commands that follow within
:data:`RETRY_S` do not wait for it again (a ``list`` of 50 jobs once waited 9.6 s), and
``list`` and ``show`` say which cluster is silent and since when (:func:`heard`).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from handyjobs.core import paths
from handyjobs.core.records import ClusterState
from handyjobs.errors import HandyjobsError
from handyjobs.structs import frozen

#: Seconds a controller that did not answer is left alone before it is asked again.
RETRY_S = 5.0
FILE = "slurm-squeue.json"


@frozen
class Answer:
    """One squeue answer: whose (cluster and user), when, and every job it listed."""

    key: str
    taken: float
    jobs: dict[str, ClusterState]


@frozen
class Silence:
    """The controller did not answer: when it was asked, why not, and its last answer's time."""

    key: str
    cluster: str
    asked: float
    why: str
    #: When it last answered (None: not since this state folder has kept its answers).
    since: float | None


_answer: Answer | None = None
_silence: Silence | None = None
#: The silence this process met (kept after a retry, for the line ``list`` prints).
_heard: Silence | None = None


def _path() -> Path:
    return paths.home() / FILE


def _read() -> dict[str, object]:
    """The file's document; {} when there is none or it cannot be read."""
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads(_path().read_bytes())
        if isinstance(doc, dict):
            return doc
    return {}


def _write(doc: dict[str, object]) -> None:
    # Best effort: a read-only or full state folder only costs the next command a call.
    with contextlib.suppress(OSError, HandyjobsError):
        if _path().parent.is_dir():
            paths.write_atomic(_path(), json.dumps(doc).encode())


def recent(key: str, ttl: float, after: float | None = None) -> dict[str, ClusterState] | None:
    """The jobs of an answer younger than ``ttl`` (and taken after ``after``), or None."""
    global _answer
    now = time.time()

    def usable(taken: float) -> bool:
        return 0 <= now - taken < ttl and (after is None or taken > after)

    if _answer is not None and _answer.key == key and usable(_answer.taken):
        return _answer.jobs
    if ttl <= 0:
        return None
    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
        doc = _read()
        if doc.get("key") == key and usable(float(doc["taken"])):  # type: ignore[arg-type]
            raw = doc["jobs"]
            assert isinstance(raw, dict)
            jobs = {j: c for j, d in raw.items() if (c := ClusterState.from_dict(d)) is not None}
            _answer = Answer(key, float(doc["taken"]), jobs)  # type: ignore[arg-type]
            return jobs
    return None


def silent(key: str) -> Silence | None:
    """The controller was asked less than :data:`RETRY_S` ago and did not answer: that silence."""
    global _silence, _heard
    now = time.time()
    if _silence is not None and _silence.key == key and 0 <= now - _silence.asked < RETRY_S:
        return _silence
    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
        doc = _read()
        quiet = doc.get("silent")
        if doc.get("key") == key and isinstance(quiet, dict):
            asked = float(quiet["asked"])
            if 0 <= now - asked < RETRY_S:
                since = doc.get("taken")
                _silence = _heard = Silence(
                    key,
                    str(quiet.get("cluster", "")),
                    asked,
                    str(quiet.get("why", "")),
                    float(since) if since is not None else None,  # type: ignore[arg-type]
                )
                return _silence
    return None


def answered(key: str, jobs: dict[str, ClusterState]) -> None:
    """Keep an answer just taken (in memory and in the file); any silence is over."""
    global _answer, _silence, _heard
    now = time.time()
    _answer, _silence, _heard = Answer(key, now, jobs), None, None
    _write({"key": key, "taken": now, "jobs": {j: c.to_dict() for j, c in jobs.items()}})


def no_answer(key: str, cluster: str, why: str) -> Silence:
    """Keep that the controller did not answer now; the last answer stays (its time says since
    when the cluster has been silent)."""
    global _silence, _heard
    now = time.time()
    doc = _read()
    if doc.get("key") != key:
        doc = {"key": key, "taken": None, "jobs": {}}
    last = doc.get("taken")
    if _answer is not None and _answer.key == key:
        last = max(_answer.taken, float(last)) if isinstance(last, (int, float)) else _answer.taken
    since = float(last) if isinstance(last, (int, float)) else None
    doc["taken"] = since
    doc["silent"] = {"asked": now, "cluster": cluster, "why": why}
    _write(doc)
    _silence = _heard = Silence(key, cluster, now, why, since)
    return _silence


def forget() -> None:
    """Drop the answer kept in memory (the file's is checked by age)."""
    global _answer
    _answer = None


def taken() -> float | None:
    """When the answer this process holds was taken (None: it holds none)."""
    return None if _answer is None else _answer.taken


def heard() -> Silence | None:
    """The silence this process met when it last asked, if the controller did not answer."""
    return _heard
