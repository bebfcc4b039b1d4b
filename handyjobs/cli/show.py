"""``handyjobs show``: everything on one job's record."""

from __future__ import annotations

from handyjobs.cli.args import JSON, NAME
from handyjobs.cli.common import dump_json, hide_secrets, say_silences
from handyjobs.cli.listing import SHOW_SECRETS
from handyjobs.cli.parse import Command, Parsed


def _run(p: Parsed) -> None:
    # lazy: only this command pays for it, not `--help` or the other commands
    from handyjobs.views import summary

    name = p.text("name")
    assert name is not None
    view = summary.job_view(name)
    say_silences([view.record])
    if p.flag("as_json"):
        doc = hide_secrets(view.record.to_dict(), p.flag("show_secrets"))
        doc["metrics"] = {s.metric: s.to_dict() for s in view.metrics}
        dump_json(doc)
        return
    from handyjobs.views import show  # lazy: --json output never renders

    show.print_record(view.record, view.metrics, show_secrets=p.flag("show_secrets"))


COMMAND = Command(
    "show",
    "Everything on a job's record, what it cost, and its metrics' last and best values.",
    _run,
    args=(NAME,),
    options=(JSON, SHOW_SECRETS),
)
