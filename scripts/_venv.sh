# Sourced by the other scripts: make (or reuse) a virtualenv with the project installed.
# PYTHON picks the interpreter (default python3), VENV the directory (default .venv), EXTRAS the
# extras to install (default [dev]; set but empty, as demo.sh does, installs the package alone).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "pydantic-toast needs Python >= 3.11; set PYTHON=/path/to/python3.11+" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".${EXTRAS-[dev]}"
