# Sourced by the other scripts: makes .venv/ with the project installed.
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setting up $VENV ..." >&2
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
stamp="$VENV/.installed-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)-$1"
if [ ! -f "$stamp" ]; then
  echo "installing hashcheck[$1] into $VENV ..." >&2
  log="$VENV/install.log"
  if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -e "$ROOT[$1]" >"$log" 2>&1; then
    cat "$log" >&2
    echo "installing hashcheck[$1] failed; the log above says why" >&2
    exit 1
  fi
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
