"""The trainer takes over the SIGUSR1 that the Slurm node wrapper ignored for torchrun's sake.

Under Slurm every process of the step gets the time-limit warning; torchrun would die of it,
so the node wrapper ignores it and torchrun's workers inherit SIG_IGN. That SIG_IGN is
handyjobs', not the script's: the trainer must still turn the warning into ``should_stop``.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from handyjobs.trainer import stopping


@pytest.fixture
def ignored_usr1() -> Iterator[None]:
    """SIGUSR1 ignored, as a worker under the Slurm node wrapper starts; restored afterwards."""
    old = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGUSR1, old)


def test_ignored_by_the_node_wrapper_is_taken_over(
    ignored_usr1: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(stopping.IGNORED_FOR_TORCHRUN_ENV, "SIGUSR1")
    listener = stopping.StopListener()
    listener.acquire([signal.SIGUSR1])
    try:
        assert signal.SIGUSR1 in listener.signals
        assert listener.read() is False  # reading the flag arms the listener
        signal.raise_signal(signal.SIGUSR1)
        assert listener.requested == "SIGUSR1"
    finally:
        listener.requested = None
        listener.release()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN


def test_a_scripts_own_sig_ign_is_left_alone(
    ignored_usr1: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(stopping.IGNORED_FOR_TORCHRUN_ENV, raising=False)
    listener = stopping.StopListener()
    listener.acquire([signal.SIGUSR1])
    try:
        assert signal.SIGUSR1 not in listener.signals
    finally:
        listener.release()


def test_a_warning_before_the_flag_is_read_is_kept_under_a_rank_wrapper(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # handyjobs' rank wrapper handles the signal to pass it on: its worker starts with the
    # default, not SIG_IGN. A warning while a resumed run still loads must not kill it (-10);
    # it is sent once, so it is kept for the loop's first look at the flag.
    old = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    monkeypatch.setenv(stopping.IGNORED_FOR_TORCHRUN_ENV, "SIGUSR1")
    listener = stopping.StopListener()
    listener.acquire([signal.SIGUSR1])
    try:
        signal.raise_signal(signal.SIGUSR1)  # before the loop reads the flag: kept
        assert listener.requested == "SIGUSR1"
        assert listener.read() is True
        signal.raise_signal(signal.SIGUSR1)  # again, much later: still not fatal
        assert listener.requested == "SIGUSR1"
    finally:
        listener.requested = None
        listener.release()
        signal.signal(signal.SIGUSR1, old)


def test_the_trainer_notes_an_early_stop_where_the_job_side_looks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    note = tmp_path / "stopped-early"
    monkeypatch.delenv(stopping.STOPPED_FILE_ENV, raising=False)
    stopping.note_stopped_early("SIGUSR1")  # no backend asked for it: nothing is written
    assert not note.exists()
    monkeypatch.setenv(stopping.STOPPED_FILE_ENV, str(note))
    stopping.note_stopped_early("SIGUSR1")
    assert note.read_text() == "SIGUSR1\n"
    monkeypatch.setenv(stopping.STOPPED_FILE_ENV, str(tmp_path / "gone" / "note"))
    stopping.note_stopped_early(None)  # best effort: a note that cannot be written is no error
