"""The rough edges of issue 18 that need no tmux: the CLI run in this process, real files.

Each test is named after the edge's number in the issue and fails on the code before its fix.
"""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_in_process


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private state folder; main() disables the garbage collector, given back after."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    monkeypatch.setenv("HANDYJOBS_HOME", str(state))
    for key in ("HANDYJOBS_PARALLEL", "HANDYJOBS_GPUS", "HANDYJOBS_ON_EXIT", "COLUMNS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HANDYJOBS_GPU_MEM_THRESHOLD_MIB", "")
    yield state
    gc.enable()


run = run_in_process


def test_7_config_shows_the_value_in_force_and_where_it_comes_from(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(["config", "parallel", "2"], capsys)[0] == 0
    monkeypatch.setenv("HANDYJOBS_PARALLEL", "4")
    code, out, _ = run(["config"], capsys)
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:1].isalpha()}
    assert rows["parallel"][1:3] == ["4", "HANDYJOBS_PARALLEL"] and "(the file says 2)" in out
    assert rows["gpus"][1:3] == ["-", "default"]
    assert run(["config", "parallel"], capsys)[1] == "4\n"
    doc = json.loads(run(["config", "--json"], capsys)[1])
    assert doc["parallel"] == 2  # the file's value, as before
    assert doc["in_force"]["parallel"] == {"value": "4", "from": "HANDYJOBS_PARALLEL"}
    monkeypatch.delenv("HANDYJOBS_PARALLEL")
    assert run(["config"], capsys)[1].splitlines()[0].split()[1:3] == ["2", "file"]
    # A negative value is a value, refused for what it is: one line, exit 2.
    code, out, err = run(["config", "parallel", "-1"], capsys)
    assert code == 2 and out == ""
    assert err == "handyjobs: error: parallel '-1': give a whole number (0 for no limit)\n"


def test_8_help_lists_every_command_whole_with_version_and_start_says_where_options_go(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from handyjobs.cli.commands import COMMANDS, command

    code, out, err = run(["--help"], capsys)
    assert code == 0 and err == ""
    flat = " ".join(out.split())
    assert not re.search(r"[a-z,]\.\.\.|…", out)  # no description cut short
    for name in COMMANDS:
        assert " ".join(command(name).summary.split()) in flat, name
    assert "--version, -V" in out and "--help" in out
    bare = run([], capsys)[1]
    assert len(bare.splitlines()) <= 10 and all(name in bare for name in COMMANDS)
    for name in COMMANDS:
        text = run([name, "--help"], capsys)[1]
        assert "list[" not in text and "<int>" not in text and "<str>" not in text, name
    start = " ".join(run(["start", "--help"], capsys)[1].split())
    assert "Options it does not know, and everything after --, go to the script as they are" in (
        start
    )
