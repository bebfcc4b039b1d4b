"""handyjobs.metrics: the JSON-lines schema, where lines go, concurrent appends; read back with
the reader the CLI uses (handyjobs.views.curves)."""

from __future__ import annotations

import json
import math
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy
import pytest
import torch
from conftest import REPO

from handyjobs import metrics
from handyjobs.errors import HandyjobsError
from handyjobs.metrics import MetricsError, log_metrics
from handyjobs.views import curves


@pytest.fixture(autouse=True)
def outside_handyjobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start outside any job, even when pytest itself runs inside one."""
    for name in ("HANDYJOBS_RUN", "HANDYJOBS_METRICS_FILE", "HANDYJOBS_JOB"):
        monkeypatch.delenv(name, raising=False)


def strict_lines(path: Path) -> list[dict[str, Any]]:
    """Parse every line as strict JSON (NaN and Infinity are not JSON)."""

    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name} in {path}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_one_line_per_call_in_the_documented_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys in schema order; step as given; run from HANDYJOBS_RUN; time ISO-8601 UTC."""
    monkeypatch.setenv("HANDYJOBS_RUN", "3")
    path = tmp_path / "m.jsonl"
    log_metrics({"loss": 0.5, "lr": 3e-4}, step=10, path=path)
    log_metrics({"loss": 0.25}, path=path)
    first, second = strict_lines(path)
    assert list(first) == ["step", "time", "run", "values"]
    assert first["step"] == 10 and first["run"] == 3
    assert first["values"] == {"loss": 0.5, "lr": 3e-4}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert second["step"] is None
    assert path.read_bytes().endswith(b"}\n")


def test_run_is_null_outside_handyjobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No HANDYJOBS_RUN (or a malformed one): run is null."""
    log_metrics({"x": 1}, path=tmp_path / "a.jsonl")
    monkeypatch.setenv("HANDYJOBS_RUN", "two")
    log_metrics({"x": 1}, path=tmp_path / "a.jsonl")
    assert [line["run"] for line in strict_lines(tmp_path / "a.jsonl")] == [None, None]


def test_where_lines_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """path argument, else HANDYJOBS_METRICS_FILE, else ./metrics.jsonl."""
    monkeypatch.chdir(tmp_path)
    log_metrics({"a": 1})
    assert (tmp_path / "metrics.jsonl").exists()
    job_file = tmp_path / "job" / "metrics.jsonl"
    monkeypatch.setenv("HANDYJOBS_METRICS_FILE", str(job_file))
    log_metrics({"a": 2})
    log_metrics({"a": 3}, path=tmp_path / "mine.jsonl")
    assert curves.read(job_file) == {"a": [(0.0, 2.0)]}
    assert curves.read(tmp_path / "mine.jsonl") == {"a": [(0.0, 3.0)]}
    assert curves.read(tmp_path / "metrics.jsonl") == {"a": [(0.0, 1.0)]}


def test_new_files_are_private(tmp_path: Path) -> None:
    """A metrics file handyjobs creates is 0600, like every file of a job."""
    path = tmp_path / "deep" / "er" / "m.jsonl"
    log_metrics({"a": 1}, path=path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_numbers_of_every_kind_and_non_finite_as_null(tmp_path: Path) -> None:
    """ints, NumPy scalars and one-element tensors become floats; NaN and inf become null."""
    path = tmp_path / "m.jsonl"
    values = {
        "int": 3,
        "np": numpy.float32(0.5),
        "tensor": torch.tensor(2.0),
        "nan": float("nan"),
        "inf": torch.tensor(float("inf")),
        "ninf": -math.inf,
    }
    log_metrics(values, step=numpy.int64(7), path=path)
    (line,) = strict_lines(path)
    assert line["step"] == 7
    assert line["values"] == {
        "int": 3.0,
        "np": 0.5,
        "tensor": 2.0,
        "nan": None,
        "inf": None,
        "ninf": None,
    }
    assert line["nonfinite"] == {"nan": "nan", "inf": "inf", "ninf": "-inf"}
    back = curves.read(path)
    assert math.isnan(back["nan"][0][1]) and back["tensor"] == [(7.0, 2.0)]
    assert back["inf"] == [(7.0, math.inf)] and back["ninf"] == [(7.0, -math.inf)]


@pytest.mark.parametrize(
    ("values", "step", "match"),
    [
        ({"loss": "low"}, None, "'loss'.*not a number"),
        ({"loss": torch.ones(3)}, None, "'loss'.*not a number"),
        ({3: 1.0}, None, "non-empty strings"),
        ({"": 1.0}, None, "non-empty strings"),
        ([("loss", 1.0)], None, "mapping"),
        ({"loss": 1.0}, 1.5, "step must be an integer"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path: Path, values: Any, step: Any, match: str) -> None:
    """Names must be strings, values numbers, steps integers; nothing is written otherwise."""
    with pytest.raises(MetricsError, match=match) as info:
        log_metrics(values, step=step, path=tmp_path / "m.jsonl")
    assert isinstance(info.value, HandyjobsError) and isinstance(info.value, ValueError)
    assert not (tmp_path / "m.jsonl").exists()


def test_reader_skips_a_torn_line_and_the_writer_starts_afresh(tmp_path: Path) -> None:
    """A writer killed mid-line leaves a fragment: readers skip it, the next line is whole."""
    path = tmp_path / "m.jsonl"
    log_metrics({"loss": 1.0}, step=1, path=path)
    with open(path, "ab") as handle:
        handle.write(b'{"step": 2, "time": "2025-01-01T00:00:00.000Z", "run": null, "val')
    assert curves.read(path) == {"loss": [(1.0, 1.0)]}  # the torn last line of a live writer
    log_metrics({"loss": 0.5}, step=3, path=path)
    assert curves.read(path) == {"loss": [(1.0, 1.0), (3.0, 0.5)]}
    assert len(path.read_text().splitlines()) == 3


def test_reader_tolerates_junk_and_a_missing_file(tmp_path: Path) -> None:
    """Lines that are not records are skipped; a file not written yet reads as empty."""
    assert curves.read(tmp_path / "none.jsonl") == {}
    path = tmp_path / "m.jsonl"
    path.write_text(
        "\n".join(
            [
                "[1, 2]",
                '{"step": 1}',
                '{"step": 2, "time": "t", "run": 1, "values": {"a": 1, "b": "x", "c": null}}',
                "\xff not json",
            ]
        )
        + "\n"
    )
    got = curves.read(path)
    assert set(got) == {"a", "c"} and got["a"] == [(2.0, 1.0)]
    assert math.isnan(got["c"][0][1])  # null in "values" is a value that was not finite


CONCURRENT_WRITER = """
import sys
from handyjobs.metrics import log_metrics
writer = int(sys.argv[2])
padding = {f"pad{i}": float(i) for i in range(200)}  # about 3 KB a line
for step in range(300):
    log_metrics({"writer": writer, **padding}, step=step, path=sys.argv[1])
"""


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    """4 processes append 300 lines of ~3 KB each: every line parses, none is lost."""
    path = tmp_path / "m.jsonl"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT_WRITER, str(path), str(w)], env=env)
        for w in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    lines = strict_lines(path)
    assert len(lines) == 1200
    for writer in range(4):
        steps = [line["step"] for line in lines if line["values"]["writer"] == writer]
        assert steps == list(range(300))


def test_a_diverged_loss_reads_back_as_diverged(tmp_path: Path) -> None:
    """Written with log_metrics, read as the CLI reads: NaN kept, best among the finite, the
    step where it diverged; a metric without steps counts its points."""
    path = tmp_path / "m.jsonl"
    for step, values in [
        (0, {"loss": 2.0, "val/acc": 0.2}),
        (10, {"loss": 1.0}),
        (20, {"loss": 1.5, "val/acc": 0.6}),
        (30, {"loss": float("nan"), "val/acc": 0.5}),
        (None, {"lr": 0.1}),
        (None, {"lr": 0.05}),
    ]:
        log_metrics(values, step=step, path=path)
    got = curves.read(path)
    assert got["loss"][:3] == [(0, 2.0), (10, 1.0), (20, 1.5)] and math.isnan(got["loss"][3][1])
    assert got["val/acc"] == [(0, 0.2), (20, 0.6), (30, 0.5)]
    assert got["lr"] == [(0, 0.1), (1, 0.05)]
    loss, lr, acc = curves.summarise(got)
    assert (loss.best, loss.best_step, loss.diverged_step, loss.points) == (1.0, 10, 30, 4)
    assert loss.to_dict() == {
        "last": None,
        "nonfinite": "nan",
        "last_step": 30,
        "best": 1.0,
        "best_step": 10,
        "best_is": "min",
        "points": 4,
        "diverged_at": 30,
    }
    assert (acc.last, acc.best, acc.best_step, acc.diverged_step) == (0.5, 0.6, 20, None)
    assert "nonfinite" not in acc.to_dict() and "diverged_at" not in acc.to_dict()
    assert (lr.best, lr.best_step) == (0.05, 1)
    assert math.isnan(curves.last_value(path, "loss") or 0.0)


@pytest.mark.parametrize(
    ("name", "higher"),
    [
        ("loss", False),
        ("val_loss", False),
        ("lr", False),
        ("mape", False),
        ("perplexity", False),
        ("acc", True),
        ("val/acc", True),
        ("top1_acc", True),
        ("accuracy", True),
        ("acc5", True),
        ("eval-F1", True),
        ("f1_macro", True),
        ("AUC", True),
        ("mAP", True),
        ("bleu4", True),
        ("rougeL", True),
        ("precision", True),
        ("recall@10", True),
        ("score", True),
    ],
)
def test_which_metrics_are_better_higher(name: str, higher: bool) -> None:
    """The documented rule: parts of the name that read as a score mean higher is better."""
    assert metrics.higher_is_better(name) is higher


def test_readers_and_writer_import_no_torch() -> None:
    """The CLI reads metrics: importing the module must not import torch."""
    code = "import sys, handyjobs.metrics; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert done.returncode == 0, done.stderr


def test_a_file_system_without_locks_still_takes_every_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """flock fails on Lustre without -o flock: the training step goes on, the line lands."""
    import errno
    import fcntl

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    target = tmp_path / "m.jsonl"
    metrics.append_line(target, b'{"a": 1}\n')
    metrics.append_line(target, b'{"a": 2}\n')
    assert target.read_bytes() == b'{"a": 1}\n{"a": 2}\n'
