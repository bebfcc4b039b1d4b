"""The trainer takes over the SIGUSR1 that the Slurm node wrapper ignored for torchrun's sake.

Under Slurm every process of the step gets the time-limit warning; torchrun would die of it,
so the node wrapper ignores it and torchrun's workers inherit SIG_IGN. That SIG_IGN is
handyjobs', not the script's: the trainer must still turn the warning into ``should_stop``.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

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
        signal.raise_signal(signal.SIGUSR1)  # before the loop reads the flag: dropped, not fatal
        assert listener.requested is None
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
