"""What several commands share: JSON output, ``--state`` parsing, one name at a time, job
names for shell completion, and ``list`` itself."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence

from handyjobs.core.states import JobState
from handyjobs.errors import HandyjobsError, UsageError

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from typing import Any

    from handyjobs.core.records import JobRecord


def complete_names(incomplete: str) -> list[str]:
    """Job names for shell completion (active and recent ones); never writes the registry."""
    from handyjobs.core import jobs  # lazy: only completion and the commands that act need it

    try:
        records = jobs.peek_jobs(200)
    except Exception:  # completion must never print a traceback into the user's prompt
        return []
    return [r.name for r in records if r.name.startswith(incomplete)]


def dump_json(doc: object) -> None:
    """Write ``doc`` as indented JSON to stdout (one write: fast on big documents)."""
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def hide_secrets(doc: dict[str, Any], show: bool = False) -> dict[str, Any]:
    """A record's JSON with its ``--env`` values replaced by "..." (``show``: kept as they are),
    so that a secret given as --env never reaches a script's output unless asked for."""
    spec = doc.get("spec")
    if not show and isinstance(spec, dict) and isinstance(spec.get("env"), dict):
        spec["env"] = dict.fromkeys(spec["env"], "...")
    return doc


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
    from handyjobs.cli.output import error_line  # lazy: `list` never reports per-name errors

    codes = []
    for name in dict.fromkeys(names):
        try:
            act(name)
        except HandyjobsError as exc:
            from handyjobs.views import render  # lazy: only on an error; list stays lean

            error_line(render.error_text(exc))
            codes.append(exc.exit_code)
    if not codes:
        return 0
    return 2 if all(c == 2 for c in codes) else 1


def do_list(
    all_jobs: bool,
    states: Sequence[str] | None,
    as_json: bool,
    metric: str | None = None,
    group: str | None = None,
    show_secrets: bool = False,
) -> None:
    """``handyjobs list`` (``--group``: one group; ``--metric``: a column for a metric's last
    value; ``--show-secrets``: --env values in the JSON)."""
    every = all_jobs or group is not None
    if metric:
        from handyjobs.views import summary  # lazy: only --metric reads metrics

        listing = summary.list_with_metric(metric, every, parse_states(states))
        records, total, values = listing.records, listing.total, listing.values
    else:
        from handyjobs.core import jobs  # lazy: start-up of `list` is measured, see the bench

        records, total = jobs.list_jobs(all_jobs=every, states=parse_states(states))
        values = {}
    if group is not None:
        records = [r for r in records if r.spec.group == group]
    say_silences(records)
    if as_json:
        docs = [hide_secrets(r.to_dict(), show_secrets) for r in records]
        if metric:
            from handyjobs.views.curves import json_number  # lazy: only --metric reads metrics

            for doc in docs:  # NaN is no JSON: null, and "nonfinite" says which it was
                last = json_number(values.get(doc["name"]))
                doc["metric"] = {"name": metric, "last": last.pop("value"), **last}
        dump_json(docs)
        if not every and not states and total > len(records):
            # The array stays the documented schema; the note goes where scripts ignore it.
            print(
                f"handyjobs: {len(records)} of {total} jobs listed; --all lists every one",
                file=sys.stderr,
            )
        return
    from handyjobs.views import render  # lazy: --json output never renders a table

    render.print_jobs(records, total, every or bool(states), metric, values)


def say_silences(records: Sequence[JobRecord]) -> None:
    """One line on stderr per scheduler that did not answer while the records were read: the
    states shown are its last answer (stderr keeps ``--json`` output the documented schema)."""
    asked = {r.current.backend for r in records if r.state.active}
    if not asked:
        return
    from handyjobs import backends  # lazy: only when active runs were reconciled

    for name in sorted(asked):
        line = backends.describe(name).silence()
        if line:
            print(f"handyjobs: {line}", file=sys.stderr)


def pick_names(
    names: Sequence[str] | None,
    group: str | None,
    every: bool,
    states: Sequence[JobState],
    what: str,
) -> list[str]:
    """The jobs a command acts on: the names given, or those of ``--group`` / ``--all``."""
    from handyjobs.core import jobs  # lazy: `list` imports this module and never picks names

    forms = sum([bool(names), group is not None, every])
    if forms != 1:
        raise UsageError(f"give the jobs {what}: NAME..., --group GROUP, or --all")
    if names:
        return list(names)
    picked = jobs.names(group, states, every)
    if not picked:
        whose = "no job" if every else f"no job of group {group}"
        state = f" is {'/'.join(s.value for s in states)}" if states else " exists"
        raise UsageError(f"{whose}{state}; see `handyjobs list --all`")
    return picked
