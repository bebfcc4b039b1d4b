"""The tmux backend's handle on a run: the session it made, by name and by tmux's id, typed."""

from __future__ import annotations

from handyjobs.core.records import Run
from handyjobs.structs import frozen


@frozen
class TmuxHandle:
    """This backend's handle on a run: the session it made, by name and by tmux's id."""

    session: str = ""
    session_id: str | None = None

    @classmethod
    def of(cls, run: Run) -> TmuxHandle:
        """The handle a run stores (``run.handle`` is data at rest; only we read its keys)."""
        return cls(run.handle.get("session", ""), run.handle.get("session_id"))

    def stored(self) -> dict[str, str]:
        """The form ``run.handle`` keeps."""
        out = {"session": self.session}
        if self.session_id is not None:
            out["session_id"] = self.session_id
        return out
