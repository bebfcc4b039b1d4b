"""Hostile and odd input of issue 21 (items 6 and 7) that needs no tmux: the CLI run in this
process on real files; each test fails on the code before its fix."""

from __future__ import annotations

import errno
import fcntl
import gc
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Sandbox, make_record, reap, run_in_process

from handyjobs.cli import main
from handyjobs.core import registry
from handyjobs.core.records import JobState
from handyjobs.structs import replace


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private state folder and tmux socket; main() disables the garbage collector, given
    back after. A held job that a test starts has a runner waiting in tmux: it is ended with
    its server at the end, never left on the caller's socket."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    sock = f"hj-fast-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("HANDYJOBS_HOME", str(state))
    monkeypatch.setenv("HANDYJOBS_TMUX_SOCKET", sock)
    for key in ("HANDYJOBS_PARALLEL", "HANDYJOBS_GPUS", "HANDYJOBS_ON_EXIT", "COLUMNS"):
        monkeypatch.delenv(key, raising=False)
    yield state
    gc.enable()
    reap(Sandbox(tmp_path, {"HANDYJOBS_HOME": str(state), "HANDYJOBS_TMUX_SOCKET": sock}))


run = run_in_process


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


def _no_traceback(code: int, err: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err


def test_non_utf8_argument_refused_in_one_line(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An argument, an --env value or a --grid value of bytes that are not UTF-8 is one line,
    exit 2, and nothing is saved (it was a traceback from the registry's write)."""
    script = tmp_path / "train.py"
    script.write_text("print('hi')\n")
    bad = b"\xff".decode("utf-8", "surrogateescape")  # what Python makes of such an argv
    for argv in (
        ["start", "--hold", str(script), bad],
        ["start", "--hold", "--env", f"TOKEN={bad}", str(script)],
        ["sweep", "--hold", "--grid", f"lr={bad}", str(script)],
    ):
        code, _, err = run(argv, capsys)
        _no_traceback(code, err)
        assert "not valid UTF-8" in err
    assert registry.load_all(home) == []
    code, _, err = run(["start", "--hold", "--env", f"TOKEN=s3cr3t{bad}", str(script)], capsys)
    assert "s3cr3t" not in err  # the value of an --env is never echoed


def test_non_utf8_working_folder_and_state_folder(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A working folder or a state folder whose name is not UTF-8 is one line and exit 2."""
    odd = Path(tmp_path / b"d\xff".decode("utf-8", "surrogateescape"))
    odd.mkdir()
    (odd / "train.py").write_text("print('hi')\n")
    monkeypatch.chdir(odd)
    code, _, err = run(["start", "--hold", "train.py"], capsys)
    _no_traceback(code, err)
    assert "working folder" in err and "d\\xff" in err
    assert registry.load_all(home) == []
    monkeypatch.setenv("HANDYJOBS_HOME", str(odd / "state"))
    for argv in (["start", "--hold", "train.py"], ["list"]):
        code, _, err = run(argv, capsys)
        _no_traceback(code, err)
        assert "state folder" in err
    assert not (odd / "state").exists()


def test_config_value_not_utf8_or_with_del_keeps_the_file_valid(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`config on_exit` with a byte that is not UTF-8 is refused; one with DEL and control
    characters is written as valid TOML: start and config go on working after either."""
    bad = b"\xff".decode("utf-8", "surrogateescape")
    code, _, err = run(["config", "on_exit", f"echo {bad}"], capsys)
    _no_traceback(code, err)
    code, _, err = run(["config", "on_exit", "echo \x7f\x01 end"], capsys)
    assert code == 0, err
    code, out, err = run(["config", "on_exit"], capsys)
    assert code == 0 and "end" in out, err
    script = tmp_path / "train.py"
    script.write_text("print('hi')\n")
    code, _, err = run(["start", "--hold", "--name", "ok", str(script)], capsys)
    assert code == 0, err
    assert registry.load_one("ok", home) is not None


@pytest.mark.parametrize(
    "text", [b"parallel = [\n", b"groups = 3\n", b"parallel = 1e400\n", b'on_exit = "\xff"\n']
)
def test_malformed_config_is_one_line_naming_the_file(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: bytes
) -> None:
    """A config.toml that is not TOML, not UTF-8 or of wrong types: `config`, `config KEY V`
    and `start` say so in one line naming the file (some were tracebacks)."""
    (home / "config.toml").write_bytes(text)
    script = tmp_path / "train.py"
    script.write_text("print('hi')\n")
    for argv in (["config"], ["config", "parallel", "2"], ["start", "--hold", str(script)]):
        code, _, err = run(argv, capsys)
        _no_traceback(code, err)
        assert str(home / "config.toml") in err, argv
    assert (home / "config.toml").read_bytes() == text  # nothing rewritten half-read


def _hostile(doc: dict[str, Any], case: str) -> None:
    """Make one value of a well-formed registry wrong."""
    run = doc["jobs"][0]["runs"][-1]
    if case == "next_id":
        doc["next_id"] = "x"
    elif case == "finished":
        doc["finished"] = 1e400
    elif case == "pid":
        run["runner"] = {"pid": -1, "start": 1}
    elif case == "huge_pid":
        run["main"] = {"pid": 10**30, "start": 1}
    elif case == "name":
        doc["jobs"][0]["name"] = "../../x"
    elif case == "runs":
        doc["jobs"][0]["runs"] = []


@pytest.mark.parametrize("case", ["next_id", "finished", "pid", "huge_pid", "name", "runs"])
def test_hostile_registry_values_are_one_line_naming_the_file(
    home: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    """Wrong types, huge numbers, a negative pid, a name that is a path, a job without a
    run: list, show and stop say which file and what to do, in one line (some were
    tracebacks, some were acted on), and the file is left as it is."""
    _save(home, make_record("z", JobState.RUNNING))
    path = home / "registry.json"
    doc = json.loads(path.read_text())
    _hostile(doc, case)
    path.write_text(json.dumps(doc))
    before = path.read_bytes()
    for argv in (["list"], ["show", "z"], ["stop", "z"]):
        code, _, err = run(argv, capsys)
        assert code == 1, (argv, err)
        assert err.count("\n") == 1 and str(path) in err and "Traceback" not in err, err
        assert "move it aside" in err
    assert path.read_bytes() == before


def test_one_wrong_history_line_is_skipped_said_once_and_kept(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A well-formed history line with a wrong value (pid -1) no longer stops list, show,
    rm and clean: it is skipped with one note, and rm/clean keep it in the file."""
    _save(home, make_record("good"), make_record("old"), make_record("bad"))
    history = home / "history.jsonl"
    lines = history.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith('{"name": "bad"'):
            doc = json.loads(line)
            doc["runs"][-1]["runner"] = {"pid": -1, "start": 1}
            lines[i] = json.dumps(doc)
    history.write_text("\n".join(lines) + "\n")
    code, out, err = run(["list", "--all"], capsys)
    assert code == 0, err
    assert "good" in out and "old" in out and "bad" not in out
    assert err.count("skipped a line") == 1 and "is not a process id" in err
    code, out, err = run(["rm", "old"], capsys)
    assert code == 0, err
    code, out, err = run(["clean"], capsys)
    assert code == 0, err
    assert '"name": "bad"' in history.read_text()  # nothing the user did not ask is lost
    code, out, err = run(["show", "old"], capsys)
    assert code == 1 and "no job named old" in err


def test_logs_escape_c1_controls_and_raw_keeps_every_byte(
    home: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """C1 controls in a job's output (U+009B as UTF-8, or a lone 0x9b byte: a terminal takes
    either for CSI) are shown escaped by `logs`; the file and `logs --raw` keep every byte."""
    log = home / "jobs" / "c1" / "output.log"
    log.parent.mkdir(parents=True, mode=0o700)
    data = "red \u009b31m clear \u009b2J é\n".encode() + b"lone \x9b[2J end\n"
    log.write_bytes(data)
    _save(home, replace(make_record("c1"), log_path=str(log)))
    with pytest.raises(SystemExit) as exited:
        main(["logs", "c1"])
    shown = capsysbinary.readouterr().out
    assert exited.value.code in (0, None)
    assert "\u009b".encode() not in shown and b"\x9b[" not in shown.replace(b"\\x9b[", b"")
    assert b"red \\x9b31m clear \\x9b2J \xc3\xa9" in shown and b"lone \\x9b[2J end" in shown
    with pytest.raises(SystemExit):
        main(["logs", "c1", "--raw"])
    assert capsysbinary.readouterr().out.endswith(data)
    assert log.read_bytes() == data


def test_a_history_lookup_reads_from_the_end_not_the_whole_file(home: Path) -> None:
    """show/rm/restart of one finished job read the history from its end, a block at a time:
    finding a recent job in a 30 MB history allocates well under 1 MB (it read it all), and
    the oldest job and one never kept are still answered right."""
    import tracemalloc

    _save(home, make_record("first"))
    history = home / "history.jsonl"
    line = history.read_bytes().splitlines()[-1]
    filler = b"\n".join(line.replace(b'"first"', b'"j%d"' % i) for i in range(30_000))
    with history.open("ab") as f:
        f.write(filler + b"\n")
    _save(home, make_record("last"))
    assert history.stat().st_size > 20_000_000
    tracemalloc.start()
    try:
        found = registry.load_one("last", home)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found is not None and found.name == "last"
    assert peak < 1_000_000, peak
    oldest = registry.load_one("first", home)
    assert oldest is not None and oldest.name == "first"
    assert registry.load_one("j29999", home) is not None
    assert registry.load_one("never", home) is None


def test_a_state_folder_without_file_locks_is_one_line_and_loses_nothing(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lustre mounted without ``-o flock`` (or NFS without its lock service) fails flock with
    ENOSYS: every command that locks says so in one line, exit 1, and the registry is kept."""
    _save(home, make_record("keep", JobState.SUCCEEDED))
    before = (home / "registry.json").read_bytes()
    script = tmp_path / "job.py"
    script.write_text("print('hi')\n")

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    for argv in (
        ["start", "--hold", str(script)],
        ["sweep", str(script), "--grid", "lr=1,2"],
        ["rm", "keep"],
    ):
        code, _, err = run(argv, capsys)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1, (argv, code, err)
        assert "does not lock files" in lines[0] and "-o flock" in lines[0], lines
    assert (home / "registry.json").read_bytes() == before
    jobs = home / "jobs"
    assert not jobs.exists() or [p.name for p in jobs.iterdir()] == ["keep"]
    # Reading needs no lock: the jobs are still there to see.
    code, out, _ = run(["list", "--all"], capsys)
    assert code == 0 and "keep" in out
