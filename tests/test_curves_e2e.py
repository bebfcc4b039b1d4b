"""A real job that diverges, seen end to end: its curve, its show, its export (tmux, the CLI
in a subprocess)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from conftest import Sandbox, log_of, wait_state

from handyjobs.views.plot import NONFINITE_MARK

# A job whose loss falls, then becomes NaN at step 30 (what a too-high learning rate does).
DIVERGES = """
import math
from handyjobs import log_metrics
for step in range(0, 50, 5):
    loss = 1.0 / (step + 1) if step < 30 else math.nan
    log_metrics({"loss": loss, "epoch": step / 25}, step=step)
print("done")
"""


@pytest.mark.timeout(120)
def test_a_real_diverged_job_in_plot_show_and_metrics(sandbox: Sandbox) -> None:
    sandbox.write("diverge.py", DIVERGES)
    sandbox.cli("start", "diverge.py", "--name", "Diverge", check=True)
    rec = wait_state(sandbox, "Diverge", "succeeded", "failed", timeout=60)
    assert rec["state"] == "succeeded", log_of(sandbox, "Diverge")
    out = sandbox.cli("plot", "Diverge", "--width", "70", "--x", "epoch", check=True).stdout
    assert NONFINITE_MARK in out and "diverged at epoch 1.2 (NaN)" in " ".join(out.split())
    shown = sandbox.cli("show", "Diverge", check=True).stdout
    assert "diverged at step 30" in shown and "last NaN (step 45)" in shown
    rows = list(csv.DictReader(io.StringIO(sandbox.cli("metrics", "Diverge", check=True).stdout)))
    loss = [r for r in rows if r["metric"] == "loss"]
    assert [r["step"] for r in loss] == [str(s) for s in range(0, 50, 5)]
    assert [r["value"] for r in loss][6:] == ["nan"] * 4 and loss[0]["run"] == "1"
    assert all(r["job"] == "Diverge" and r["time"].endswith("Z") for r in rows)
    doc = json.loads(sandbox.cli("metrics", "Diverge", "--json", check=True).stdout)
    last_loss = [r for r in doc if r["metric"] == "loss"][-1]
    assert last_loss == last_loss | {"step": 45, "value": None, "nonfinite": "nan"}
