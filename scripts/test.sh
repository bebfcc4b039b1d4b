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
# Bytecode is cached (in a folder of its own, so the checkout stays clean) even where the
# caller's environment says not to write it: the tests start the CLI, runners and jobs as new
# processes thousands of times, and compiling the package anew cost each start about 50 ms.
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX="${PYTHONPYCACHEPREFIX:-$(dirname "$HANDYJOBS_HOME")/pycache}"
trap 'tmux -L "$HANDYJOBS_TMUX_SOCKET" kill-server 2>/dev/null || true' EXIT
# Two pytest workers (pytest-xdist): a test mostly waits on one process at a time (a CLI call,
# a job, torchrun), so two keep a 2-core machine busy. Every test has its own state folder, home
# and tmux socket; the ones that share the local Slurm or a real GPU (markers slurm, gpu) run
# one after another, in a pytest of their own after the workers (see below): xdist's
# loadgroup does not keep a group on one worker under pytest 9 (the group suffix it puts on
# node ids is not seen), and two Slurm tests at once take the one cluster's node from under
# each other.
# HANDYJOBS_TEST_WORKERS=0 runs in this process (for pdb or -s), any other number sets the workers.
# --dist loadfile: a test file stays on one worker, so a module's costly fixture (a torchrun of
# many checks) starts once, not once per worker (the trainer's files: 92 s -> 78 s).
parallel=(-n "${HANDYJOBS_TEST_WORKERS:-2}" --dist loadfile)
shared=(-p no:xdist -m "slurm or gpu")
echo "==> ruff"
"$VENV/bin/ruff" check .
if [ "$fast" = 1 ]; then
    # mypy (about 20 s) stays in the full run: the fast layer is for every edit.
    echo "==> pytest tests/fast"
    "$PY" -m pytest "${parallel[@]}" tests/fast "$@"
    exit
fi
echo "==> mypy --strict (package, tests, scripts)"
"$VENV/bin/mypy" --strict
# The tests that share the local Slurm or a GPU run one after another (they share one cluster),
# after the two workers. HANDYJOBS_TEST_SHARED_BESIDE=1 runs them beside the workers instead:
# they mostly wait on the cluster's daemons, so the whole takes about the longer part alone
# (about 7 minutes on 2 cores against 11.5), but not by default: under the workers' load Slurm
# sent a one-minute job's time-limit warning too late for it to checkpoint (seen in CI: no
# warning in 59 s where it comes within seconds on a quiet machine), and those tests are about
# that timing. Their report is printed after the workers' then.
shared_log="$(mktemp)"
shared_pid=""
trap 'tmux -L "$HANDYJOBS_TMUX_SOCKET" kill-server 2>/dev/null || true
      [ -n "$shared_pid" ] && kill "$shared_pid" 2>/dev/null; rm -f "$shared_log"' EXIT
if [ "${HANDYJOBS_TEST_SHARED_BESIDE:-0}" = 1 ]; then
    echo "==> pytest (the tests that share the local Slurm or a GPU, one after another) started"
    "$PY" -m pytest "${shared[@]}" "$@" >"$shared_log" 2>&1 &
    shared_pid=$!
fi
echo "==> pytest (each test on its own: two at a time)"
rc=0
"$PY" -m pytest "${parallel[@]}" -m "not slurm and not gpu" "$@" || rc=$?
shared_rc=0
if [ -n "$shared_pid" ]; then
    wait "$shared_pid" || shared_rc=$?
    shared_pid=""
    echo "==> pytest (the tests that share the local Slurm or a GPU: one after another)"
    cat "$shared_log"
else
    echo "==> pytest (the tests that share the local Slurm or a GPU: one after another)"
    "$PY" -m pytest "${shared[@]}" "$@" || shared_rc=$?
fi
if [ "$rc" != 0 ]; then
    exit "$rc"
fi
# 5: nothing of that kind among the tests asked for (e.g. `scripts/test.sh tests/fast`).
if [ "$shared_rc" != 0 ] && [ "$shared_rc" != 5 ]; then
    exit "$shared_rc"
fi
