#!/usr/bin/env bash
# Install what the tests need (tmux, a .venv with torch and the dev extra) and run them.
# Usage: scripts/test.sh [--fast] [pytest args...]     e.g. scripts/test.sh -k registry -x
#   --fast   ruff, then the fast layer only (tests/fast: no tmux, torchrun or Slurm; under a
#            minute); without it: ruff, mypy --strict, then every test, end to end included.
set -euo pipefail
fast=0
if [ "${1:-}" = "--fast" ]; then
    fast=1
    shift
fi
export HANDYJOBS_EXTRAS=dev
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
# Tests never touch the user's state or tmux server: each test gets its own HANDYJOBS_HOME and
# tmux socket (tests/conftest.py); these are belt and braces for anything run outside a fixture.
export HANDYJOBS_HOME="$(mktemp -d)/handyjobs-home"
export HANDYJOBS_TMUX_SOCKET="handyjobs-test-$$"
trap 'tmux -L "$HANDYJOBS_TMUX_SOCKET" kill-server 2>/dev/null || true' EXIT
echo "==> ruff"
"$VENV/bin/ruff" check .
if [ "$fast" = 1 ]; then
    # mypy (about 20 s) stays in the full run: the fast layer is for every edit.
    echo "==> pytest tests/fast"
    "$PY" -m pytest tests/fast "$@"
    exit
fi
echo "==> mypy --strict (package, tests, scripts)"
"$VENV/bin/mypy" --strict
echo "==> pytest"
"$PY" -m pytest "$@"
