"""plot, show, list --metric and metrics on real records and real metrics files, the CLI run in
this process (no tmux): a diverged run looks diverged, a sweep overlays, export round-trips."""

from __future__ import annotations

import csv
import gc
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_record, run_in_process

from handyjobs.core import registry
from handyjobs.core.records import JobRecord
from handyjobs.metrics import log_metrics
from handyjobs.structs import replace
from handyjobs.views.plot import MARKS, NONFINITE_MARK


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private state folder; main() disables the garbage collector, given back after."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    monkeypatch.setenv("HANDYJOBS_HOME", str(state))
    monkeypatch.setenv("NO_COLOR", "1")
    for key in ("HANDYJOBS_RUN", "HANDYJOBS_METRICS_FILE", "COLUMNS"):
        monkeypatch.delenv(key, raising=False)
    yield state
    gc.enable()


run = run_in_process


def job(home: Path, name: str, group: str | None = None, **params: str) -> Path:
    """A finished job in the registry; returns its metrics file (not written yet)."""
    base = make_record(name)
    folder = home / "jobs" / name
    folder.mkdir(parents=True)
    spec = replace(base.spec, group=group, params=tuple(params.items()))
    record: JobRecord = replace(base, spec=spec, log_path=str(folder / "output.log"))
    with registry.locked(home) as reg:
        reg.put(record)
    return folder / "metrics.jsonl"


def strict(text: str) -> Any:
    """JSON as every other reader parses it: NaN and Infinity are refused."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in JSON output")

    return json.loads(text, parse_constant=refuse)


def diverged(home: Path) -> None:
    """LR-High: loss falls, then NaN from step 30; val_acc fine."""
    path = job(home, "LR-High")
    for step, loss in ((0, 2.0), (10, 1.0), (20, 0.5), (30, math.nan), (40, math.nan)):
        log_metrics({"loss": loss, "val_acc": 0.5 + step / 100}, step=step, path=path)


def test_a_diverged_run_looks_diverged_in_every_view(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    diverged(home)
    code, out, err = run(["plot", "LR-High", "--width", "60", "--height", "8"], capsys)
    assert code == 0, err
    assert NONFINITE_MARK in out  # the NaN points are marked on the chart
    legend = " ".join(out[out.index("LR-High") :].split())  # the line may wrap at 60
    assert legend.startswith("LR-High last NaN (step 40) best 0.5 (step 20)")
    assert "diverged at step 30 (NaN)" in legend
    code, out, _ = run(["show", "LR-High"], capsys)
    (line,) = [x for x in out.splitlines() if x.startswith("metric loss")]
    assert "last NaN (step 40)" in line and "diverged at step 30" in line
    assert "best 0.5 (step 20" in line
    code, out, _ = run(["show", "LR-High", "--json"], capsys)
    loss = strict(out)["metrics"]["loss"]
    assert (loss["last"], loss["nonfinite"], loss["diverged_at"]) == (None, "nan", 30)
    assert strict(out)["metrics"]["val_acc"]["last"] == 0.9
    code, out, _ = run(["list", "--metric", "loss"], capsys)
    assert "NaN" in out.splitlines()[1].split()
    code, out, _ = run(["list", "--metric", "loss", "--json"], capsys)
    assert strict(out)[0]["metric"] == {"name": "loss", "last": None, "nonfinite": "nan"}
    code, out, _ = run(["list", "--metric", "val_acc", "--json"], capsys)
    assert strict(out)[0]["metric"] == {"name": "loss", "last": 0.9} | {"name": "val_acc"}


def sweep(home: Path) -> None:
    """Group lr-sweep: two jobs, train loss every step, val_loss and epoch every 10 steps."""
    for name, lr in (("sw-a", "0.1"), ("sw-b", "0.01")):
        path = job(home, name, group="lr-sweep", lr=lr)
        for step in range(1, 41):
            values: dict[str, float] = {"loss": 1 / step + float(lr)}
            if step % 10 == 0:
                values |= {"val_loss": 2 / step + float(lr), "epoch": step // 10}
            log_metrics(values, step=step, path=path)


def test_plot_overlays_a_sweep_with_several_metrics(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep(home)
    argv = ["plot", "--group", "lr-sweep", "--metric", "loss,val_loss", "--width", "80"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "loss, val_loss"
    legend = [line for line in lines if line.startswith("━")]
    labels = [line[4:].split("  ")[0] for line in legend]
    assert labels == ["lr=0.1 loss", "lr=0.1 val_loss", "lr=0.01 loss", "lr=0.01 val_loss"]
    # told apart without colour (this output has none): each curve has its own marker
    assert [line[1] for line in legend] == list(MARKS[:4])
    chart = "\n".join(lines[1:18])
    assert sum(mark in chart for mark in MARKS[:4]) >= 3


@pytest.mark.parametrize(
    ("extra", "title", "first", "last"),
    [
        (["--last", "5"], "loss", "36", "40"),
        (["--x", "epoch"], "loss  (by epoch)", "0.1", "4"),
        (["--x", "time"], "loss  (by seconds)", "0", None),
    ],
)
def test_plot_x_axis_and_last_steps(
    home: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    title: str,
    first: str,
    last: str | None,
) -> None:
    sweep(home)
    code, out, err = run(["plot", "sw-a", "--width", "60", "--height", "6", *extra], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == title
    axis = lines[8].split()
    assert axis[0] == first and (last is None or axis[-1] == last)


def test_plot_by_epoch_says_how_to_log_one(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    diverged(home)
    code, _, err = run(["plot", "LR-High", "--x", "epoch"], capsys)
    assert code == 1 and "'epoch'" in err and err.count("\n") == 1
    code, _, err = run(["plot", "LR-High", "--x", "hours"], capsys)
    assert code == 2 and "step, time, epoch" in err


def test_metrics_export_round_trips_as_csv_and_json(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep(home)
    diverged(home)
    code, out, err = run(["metrics", "--group", "lr-sweep", "LR-High", "--csv"], capsys)
    assert code == 0, err
    table = list(csv.DictReader(io.StringIO(out)))
    assert list(table[0]) == ["job", "run", "step", "time", "metric", "value", "params"]
    assert len(table) == 2 * (40 + 4 + 4) + 10
    assert table[0]["job"] == "LR-High"  # the jobs named first, then the group's
    first = next(r for r in table if r["job"] == "sw-a")
    assert (first["job"], first["step"], first["metric"], float(first["value"])) == (
        "sw-a",
        "1",
        "loss",
        1.1,
    )
    assert json.loads(first["params"]) == {"lr": "0.1"} and first["time"].endswith("Z")
    nan = [r for r in table if r["job"] == "LR-High" and r["metric"] == "loss"]
    assert [r["value"] for r in nan][-2:] == ["nan", "nan"] and nan[-1]["params"] == ""
    code, out, _ = run(["metrics", "LR-High", "--json"], capsys)
    rows = strict(out)
    assert rows[-1] == rows[-1] | {"metric": "val_acc", "value": 0.9, "step": 40, "params": {}}
    bad = [r for r in rows if r["value"] is None]
    assert [(r["step"], r["nonfinite"]) for r in bad] == [(30, "nan"), (40, "nan")]


def test_metrics_csv_goes_straight_into_pandas(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pandas = pytest.importorskip("pandas")
    sweep(home)
    diverged(home)
    code, out, err = run(["metrics", "--group", "lr-sweep", "LR-High"], capsys)
    assert code == 0, err
    frame = pandas.read_csv(io.StringIO(out), parse_dates=["time"])
    assert len(frame) == 2 * 48 + 10 and str(frame.time.dtype).startswith("datetime64")
    epochs = frame[(frame.job == "sw-b") & (frame.metric == "epoch")]
    assert epochs.value.tolist() == [1, 2, 3, 4] and epochs.step.tolist() == [10, 20, 30, 40]
    loss = frame[(frame.job == "LR-High") & (frame.metric == "loss")].value
    assert loss.isna().tolist() == [False, False, False, True, True]
    best = frame[frame.metric == "val_loss"].groupby("params").value.min()
    # approx: pandas before 3 reads "0.060000000000000005" as 0.06 (its default float parser)
    assert best.to_dict() == pytest.approx(
        {'{"lr":"0.01"}': 2 / 40 + 0.01, '{"lr":"0.1"}': 2 / 40 + 0.1}
    )


def test_tensorboard_export_says_how_to_get_it(
    home: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    diverged(home)
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        code, out, err = run(["metrics", "LR-High", "--tensorboard", str(tmp_path / "tb")], capsys)
        assert code == 2 and "pip install tensorboard" in err and err.count("\n") == 1
        assert not (tmp_path / "tb").exists()
        return
    code, out, err = run(["metrics", "LR-High", "--tensorboard", str(tmp_path / "tb")], capsys)
    assert code == 0, err
    assert out.startswith("wrote ")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb" / "LR-High"))
    events.Reload()
    # the finite values, as TensorBoard reads them back (a NaN would draw as nothing)
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(0, 2.0), (10, 1.0), (20, 0.5)]
    assert len(events.Scalars("val_acc")) == 5
