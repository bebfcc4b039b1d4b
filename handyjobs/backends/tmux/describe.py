"""How a run on this machine describes itself in the views: its tmux session, nothing more."""

from __future__ import annotations

from handyjobs.backends.tmux.handle import TmuxHandle
from handyjobs.core.records import JobRecord, JobSpec


class Describe:
    """The tmux backend's part of the views."""

    title = "tmux"
    plain_ends: tuple[str, ...] = ()

    def gpus(self, record: JobRecord) -> str | None:
        """None: the run's own GPUs (or what it waits for) say it."""
        return None

    def nnodes(self, spec: JobSpec) -> int | None:
        """None: nodes started by hand (``--nnodes``) say it."""
        return None

    def reason_words(self, key: str) -> str | None:
        """No scheduler of its own: no reasons of its own."""
        return None

    def place(self, record: JobRecord) -> str:
        """``tmux session NAME``: the session of the current run (the job's name unless taken)."""
        return f"tmux session {_session(record)}"

    def show_fields(self, record: JobRecord) -> list[tuple[str, str]]:
        """The session to attach to."""
        return [("tmux session", _session(record))]

    def submitted(self, record: JobRecord, state: str) -> list[str]:
        """Nothing: ``start`` announces a run on this machine itself."""
        return []

    def cancelled(self, record: JobRecord) -> str | None:
        """None: stop itself ended the processes here."""
        return None

    def paused(self, record: JobRecord, paused: bool) -> str | None:
        """None: pause itself signalled the processes here."""
        return None

    def signalled(self, record: JobRecord, sig: str) -> str | None:
        """None: kill itself signalled the processes here, and counted them."""
        return None

    def silence(self) -> str | None:
        """None: tmux is asked on this machine, and answers."""
        return None


DESCRIBE = Describe()


def _session(record: JobRecord) -> str:
    return TmuxHandle.of(record.current).session or record.name
