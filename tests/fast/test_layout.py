"""The package keeps its shape: scripts/check_layout.py finds no breach of the layout rules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "scripts" / "check_layout.py"


def test_the_layout_rules_hold() -> None:
    """Sizes, layers, import cycles, the backend's words and lazy imports: no breach named."""
    done = subprocess.run(
        [sys.executable, str(CHECK)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    breaches = [line for line in done.stdout.splitlines() if line.startswith("layout:")]
    assert done.returncode == 0 and not breaches, "\n".join(breaches) or done.stderr
