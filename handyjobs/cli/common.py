"""What several commands share: JSON output, ``--state`` parsing, one name at a time, and
``list`` itself, which the hand-parsed fast path calls without importing Typer."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence

from handyjobs.errors import HandyjobsError, UsageError
from handyjobs.records import JobState

JSON_HELP = "JSON for scripts (schema in the README)."


def dump_json(doc: object) -> None:
    """Write ``doc`` as indented JSON to stdout (one write: fast on big documents)."""
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def parse_states(values: Sequence[str] | None) -> list[JobState]:
    """``--state failed,lost`` (repeatable) -> states; a bad name is a usage error."""
    out = []
    for value in values or []:
        for item in value.split(","):
            try:
                out.append(JobState(item.strip()))
            except ValueError:
                names = ", ".join(s.value for s in JobState)
                raise UsageError(f"--state {item!r} is not a state; use one of {names}") from None
    return out


def each_name(names: Sequence[str], act: Callable[[str], None]) -> int:
    """Run ``act`` on every name once (duplicates once), going on past failures.

    Each failure is one error line; the exit code is 0 when all succeeded, else 1 (2 when every
    failure was bad usage).
    """
    from handyjobs.cli import error_line

    codes = []
    for name in dict.fromkeys(names):
        try:
            act(name)
        except HandyjobsError as exc:
            error_line(str(exc))
            codes.append(exc.exit_code)
    if not codes:
        return 0
    return 2 if all(c == 2 for c in codes) else 1


def do_list(
    all_jobs: bool, states: Sequence[str] | None, as_json: bool, metric: str | None = None
) -> None:
    """``handyjobs list`` (``--metric``: with a column for a metric's last value)."""
    if metric:
        from handyjobs import observe

        listing = observe.list_with_metric(metric, all_jobs, parse_states(states))
        records, total = listing.records, listing.total
    else:
        from handyjobs import jobs

        records, total = jobs.list_jobs(all_jobs=all_jobs, states=parse_states(states))
    if as_json:
        docs = [r.to_dict() for r in records]
        if metric:
            for doc in docs:
                doc["metric"] = {"name": metric, "last": listing.values.get(doc["name"])}
        dump_json(docs)
        return
    from handyjobs import render

    if metric:
        render.print_jobs(records, total, all_jobs or bool(states), metric, listing.values)
    else:
        render.print_jobs(records, total, all_jobs or bool(states))
