"""handyjobs.progress: the bar under handyjobs stays small in the log; the live-view JSON file."""

from __future__ import annotations

import io
import json
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from handyjobs import progress

IN_JOB = {"HANDYJOBS_JOB": "exp1"}


class FakeClock:
    """A clock the test moves by hand, so ten seconds of a loop take no time."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def terminal() -> tuple[Console, io.StringIO]:
    """A console that believes it is a terminal and records every byte it is sent."""
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=100), buffer


def collapse(raw: str) -> str:
    """What a terminal shows: each line's text after its last carriage return, escapes removed."""
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    return "\n".join(line.rsplit("\r", 1)[-1] for line in plain.split("\n"))


def run_bar(env: dict[str, str], seconds: float, items: int) -> str:
    """Iterate ``items`` items over ``seconds`` of fake time through a bar; return its bytes."""
    clock = FakeClock()
    console, buffer = terminal()
    step = seconds / items
    for _ in progress.track(
        range(items), "epoch 1/5", env=env, tty=True, clock=clock, console=console
    ):
        clock.now += step
    return buffer.getvalue()


def test_bar_under_handyjobs_adds_under_2kb_for_10_seconds() -> None:
    """A 10 s bar in a job: about one frame a second, under 2 KB of log in all."""
    raw = run_bar(IN_JOB, seconds=10.0, items=1000)
    frames = raw.count("\x1b[2K") + 1
    assert len(raw.encode()) < 2048, f"{len(raw.encode())} bytes in {frames} frames"
    assert 10 <= frames <= 12  # it still moves: once a second, plus the first and last
    assert "1000/1000" in collapse(raw).strip().splitlines()[-1]


def test_bar_redraws_once_a_second_however_fast_the_loop() -> None:
    """100,000 items in 3 s of fake time draw about 4 frames, not one per item."""
    raw = run_bar(IN_JOB, seconds=3.0, items=100_000)
    assert raw.count("\x1b[2K") + 1 <= 5


def test_rich_keeps_its_own_timer_outside_handyjobs() -> None:
    """Only a job's bar is throttled; a user's own terminal keeps rich's smooth redraws."""
    assert progress.redraw_interval({}) is None
    assert progress.redraw_interval({"HANDYJOBS_JOB": ""}) is None
    assert progress.redraw_interval(IN_JOB) == 1.0


def test_plain_lines_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    """Not a TTY: a line per quarter and nothing else, under handyjobs or not."""
    assert list(progress.track(range(8), "steps", env=IN_JOB, tty=False)) == list(range(8))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "steps: 2/8",
        "steps: 4/8",
        "steps: 6/8",
        "steps: 8/8",
    ]


def progress_env(path: Path) -> dict[str, str]:
    """A job's environment with a progress file."""
    return {**IN_JOB, "HANDYJOBS_PROGRESS_FILE": str(path)}


@pytest.mark.parametrize("tty", [True, False], ids=["bar", "plain"])
def test_progress_file_at_most_once_a_second(tmp_path: Path, tty: bool) -> None:
    """The file changes at the start, about once a fake second, and at the end; whole JSON."""
    path = tmp_path / "progress.json"
    clock = FakeClock()
    console, _ = terminal()
    seen: list[dict[str, object]] = []
    iterator = progress.track(
        range(50), "train", env=progress_env(path), tty=tty, clock=clock, console=console
    )
    for _ in iterator:
        clock.now += 0.1  # 5 s in all
        document = json.loads(path.read_text())
        if not seen or document != seen[-1]:
            seen.append(document)
    final = json.loads(path.read_text())
    assert final["done"] == 50 and final["total"] == 50
    assert final["desc"] == "train" and final["rank"] == 0
    assert final["elapsed_s"] == pytest.approx(5.0)
    assert final["rate_per_s"] == pytest.approx(10.0)
    assert final["eta_s"] == 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(final["updated_at"]))
    assert 5 <= len(seen) <= 7  # start, about one a second; the final write comes after
    assert seen[0]["done"] == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["progress.json"]  # no temp file left


def test_progress_file_mid_loop_has_rate_and_eta(tmp_path: Path) -> None:
    """Halfway through a known length: the rate and the time left follow from the clock."""
    path = tmp_path / "progress.json"
    clock = FakeClock()
    report = progress.ProgressFile(path, "eval", 40, clock, now=lambda: "T")
    report.start()
    clock.now += 2.0
    report.update(20)
    assert json.loads(path.read_text()) == {
        "desc": "eval",
        "done": 20,
        "total": 40,
        "rate_per_s": 10.0,
        "eta_s": 2.0,
        "elapsed_s": 2.0,
        "updated_at": "T",
        "rank": 0,
    }
    clock.now += 0.5
    report.update(25)  # too soon: not written
    assert json.loads(path.read_text())["done"] == 20
    assert report.writes == 2


def test_unknown_length_has_null_total_and_eta(tmp_path: Path) -> None:
    """An iterator without len: total and eta_s are null, the count is still reported."""
    path = tmp_path / "progress.json"
    list(progress.track(iter(range(5)), "stream", env=progress_env(path), tty=False))
    document = json.loads(path.read_text())
    assert (document["done"], document["total"], document["eta_s"]) == (5, None, None)


def test_early_break_still_reports_where_it_stopped(tmp_path: Path) -> None:
    """A loop left early (should_stop) writes its last count when the iterator is closed."""
    path = tmp_path / "progress.json"
    clock = FakeClock()
    iterator = progress.track(range(100), "train", env=progress_env(path), tty=False, clock=clock)
    for index in iterator:
        if index == 6:
            break
    iterator.close()  # type: ignore[attr-defined]
    assert json.loads(path.read_text())["done"] == 6


def test_no_variable_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without HANDYJOBS_PROGRESS_FILE nothing is written anywhere."""
    monkeypatch.chdir(tmp_path)
    console, _ = terminal()
    list(progress.track(range(5), "x", env=IN_JOB, tty=True, console=console))
    list(progress.track(range(5), "x", env={}, tty=False))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_file_warns_once_and_the_loop_goes_on(tmp_path: Path) -> None:
    """A folder that is gone: one warning, every item still delivered."""
    path = tmp_path / "gone" / "progress.json"
    with pytest.warns(RuntimeWarning, match="cannot write progress") as caught:
        items = list(progress.track(range(10), "x", env=progress_env(path), tty=False))
    assert items == list(range(10))
    assert len(caught) == 1


def test_progress_imports_no_torch_and_no_rich() -> None:
    """The CLI may import this module: no torch, and rich only once a bar is shown."""
    code = (
        "import sys, handyjobs.progress; "
        "assert 'torch' not in sys.modules and 'rich.progress' not in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
