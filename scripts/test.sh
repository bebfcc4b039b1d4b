#!/usr/bin/env bash
# Install what the tests need (tmux, a .venv with torch and the dev extra) and run them.
# Usage: scripts/test.sh [pytest args...]     e.g. scripts/test.sh -k registry -x
set -euo pipefail
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
echo "==> mypy --strict (package, tests, scripts)"
"$VENV/bin/mypy" --strict
echo "==> pytest"
"$PY" -m pytest "$@"
