# Shared set-up for scripts/demo.sh and scripts/test.sh: a .venv with torch and handyjobs.
# Sourced, not run. Idempotent: a second call installs nothing when nothing changed.
#
#   HANDYJOBS_TORCH_SPEC       pip requirement for torch when it is missing (default torch==2.13.0)
#   HANDYJOBS_TORCH_INDEX_URL  optional index to take torch from (e.g. a CPU-only wheel index)
#   HANDYJOBS_EXTRAS           extras to install with the package (test.sh uses "dev")

set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HANDYJOBS_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

if ! command -v tmux >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "==> installing tmux"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux >/dev/null
    else
        echo "tmux is required: install it (e.g. sudo apt-get install tmux) and run again" >&2
        exit 2
    fi
fi

if [ ! -x "$PY" ]; then
    echo "==> creating $VENV"
    python3 -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
fi

# Look torch up without importing it: the import alone takes seconds, on every run.
if ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)" \
    >/dev/null 2>&1; then
    # Install torch on its own first: letting pip resolve "torch>=..." from the package's
    # dependencies would pull several GB of CUDA libraries onto a machine without a GPU.
    spec="${HANDYJOBS_TORCH_SPEC:-torch==2.13.0}"
    echo "==> installing $spec"
    if [ -n "${HANDYJOBS_TORCH_INDEX_URL:-}" ]; then
        "$PY" -m pip install -q "$spec" --index-url "$HANDYJOBS_TORCH_INDEX_URL"
    else
        "$PY" -m pip install -q "$spec"
    fi
fi

extras="${HANDYJOBS_EXTRAS:-}"
target="$ROOT"
[ -n "$extras" ] && target="$ROOT[$extras]"
stamp="$VENV/.handyjobs-installed"
want="$(cat "$ROOT/pyproject.toml" | cksum) $extras"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$PY" -c "import handyjobs" >/dev/null 2>&1; then
    echo "==> installing handyjobs${extras:+[$extras]}"
    "$PY" -m pip install -q -e "$target"
    echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
