"""``core.shell`` finds what shutil finds: the commands ``start`` and ``--python`` name, and the
width ``list`` and ``--help`` draw to."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from handyjobs.core import shell


def _tool(folder: Path, name: str, mode: int = 0o755) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n")
    path.chmod(mode)
    return path


def test_which_finds_what_shutil_finds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    _tool(first, "tool", 0o644)  # not runnable: skipped, as by a shell
    runnable = _tool(second, "tool")
    (first / "folder").mkdir()
    path = os.pathsep.join([str(first), str(second), str(first)])
    cases = ["tool", "folder", "missing", str(runnable), str(first / "tool"), "sh"]
    for name in cases:
        assert shell.which(name, path=path) == shutil.which(name, path=path), name
    assert shell.which("tool", path=path) == str(runnable)
    assert shell.which("tool", path="") is None and shutil.which("tool", path="") is None
    monkeypatch.setenv("PATH", path)
    assert shell.which("tool") == shutil.which("tool") == str(runnable)
    monkeypatch.delenv("PATH")
    assert shell.which("sh") == shutil.which("sh")  # the system's default path


def test_terminal_columns_reads_columns_then_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "123")
    assert shell.terminal_columns() == 123 == shutil.get_terminal_size().columns
    for bad in ("0", "wide", "-5"):
        monkeypatch.setenv("COLUMNS", bad)
        assert shell.terminal_columns(77) == shutil.get_terminal_size((77, 24)).columns
    monkeypatch.delenv("COLUMNS")
    assert shell.terminal_columns(77) == shutil.get_terminal_size((77, 24)).columns
