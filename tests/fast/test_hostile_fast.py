"""Hostile and odd input of issue 21 (items 6 and 7) that needs no tmux: the CLI run in this
process on real files; each test fails on the code before its fix."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import make_record

from handyjobs.cli import main
from handyjobs.core import registry
from handyjobs.core.records import JobState


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private state folder; main() disables the garbage collector, given back after."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    monkeypatch.setenv("HANDYJOBS_HOME", str(state))
    for key in ("HANDYJOBS_PARALLEL", "HANDYJOBS_GPUS", "HANDYJOBS_ON_EXIT", "COLUMNS"):
        monkeypatch.delenv(key, raising=False)
    yield state
    gc.enable()


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``handyjobs ARGV`` in this process: exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    out = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 0), out.out, out.err


def _save(home: Path, *records: object) -> None:
    with registry.locked(home) as reg:
        for record in records:
            reg.put(record)  # type: ignore[arg-type]


def test_env_secrets_masked_in_every_json(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--env values are "..." in show, show --json and list --json; --show-secrets shows them."""
    base = make_record("sec", JobState.SUCCEEDED)
    record = replace(base, spec=replace(base.spec, env=(("TOKEN", "hunter2"),)))
    _save(home, record)
    for argv in (["show", "sec"], ["show", "sec", "--json"], ["list", "--json"]):
        code, out, err = run(argv, capsys)
        assert code == 0, err
        assert "hunter2" not in out, argv
        assert "TOKEN" in out or argv[0] == "list"
    code, out, _ = run(["show", "sec", "--json"], capsys)
    assert json.loads(out)["spec"]["env"] == {"TOKEN": "..."}
    code, out, _ = run(["list", "--json"], capsys)
    assert json.loads(out)[0]["spec"]["env"] == {"TOKEN": "..."}
    for argv in (["show", "sec", "--show-secrets"], ["show", "sec", "--json", "--show-secrets"]):
        code, out, _ = run(argv, capsys)
        assert code == 0 and "hunter2" in out, argv
    code, out, _ = run(["list", "--json", "--show-secrets"], capsys)
    assert json.loads(out)[0]["spec"]["env"] == {"TOKEN": "hunter2"}


@pytest.mark.parametrize(
    "fmt",
    ["{nope}{value}", "{value}{", "{value:>{nope}}", "{value!x}", "{0}{value}", "{value.real}"],
)
def test_sweep_arg_format_refused_in_one_line(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    """A bad --arg-format is one usage line and exit 2, with nothing queued (was a traceback)."""
    script = tmp_path / "train.py"
    script.write_text("print('hi')\n")
    code, _, err = run(
        ["sweep", "--hold", "--arg-format", fmt, "--grid", "lr=1,2", str(script)], capsys
    )
    assert code == 2, err
    assert err.count("\n") == 1 and "--arg-format" in err and "Traceback" not in err
    assert registry.load_active(home) == []
