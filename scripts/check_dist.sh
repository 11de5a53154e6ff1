#!/usr/bin/env bash
# Build the sdist and the wheel (the wheel from the sdist, as `python -m build` does), check their
# metadata with `twine check --strict` and their contents, then install the wheel into fresh venvs
# — one with no extra and one per user-facing extra of pyproject.toml ([all] included; the
# development extras [dev] and [docs] are exercised by scripts/test.sh and scripts/docs.sh) — and,
# from an empty directory with no source tree on the path, check each installed package: its
# version, the modules its extra brings, that the core imports none of them, that each feature
# works where its extra is installed and names the extra elsewhere, and that the README
# quickstart and the demo run (scripts/check_dist.py says what exactly).
# Installs and checks run CHECK_DIST_JOBS at a time (default: twice the CPUs; installs mostly
# wait on I/O). Work happens under $CHECK_DIST_DIR (default /tmp/pydantic-toast-dist); pip's
# cache is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PYTHON="${PYTHON:-python3}"
WORK="${CHECK_DIST_DIR:-/tmp/pydantic-toast-dist}"
JOBS="${CHECK_DIST_JOBS:-$(($(nproc) * 2))}"
PIP_QUIET=(--quiet --disable-pip-version-check)
variants="$("$PYTHON" scripts/check_dist.py variants pyproject.toml)"
mapfile -t VARIANTS <<<"$variants"

rm -rf "$WORK/dist" "$WORK/run"
mkdir -p "$WORK/dist" "$WORK/run"

# build and twine live in their own venv, kept between runs: neither belongs in [dev].
TOOLS="$WORK/tools"
if [ ! -x "$TOOLS/bin/twine" ]; then
    rm -rf "$TOOLS"
    "$PYTHON" -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install "${PIP_QUIET[@]}" --upgrade pip build twine
fi

echo "-- build (at ${SECONDS}s)"
"$TOOLS/bin/python" -m build --outdir "$WORK/dist" "$ROOT" >"$WORK/run/build.log" 2>&1 \
    || { cat "$WORK/run/build.log"; exit 1; }
"$TOOLS/bin/twine" check --strict "$WORK"/dist/*
VERSION="$("$TOOLS/bin/python" scripts/check_dist.py contents "$WORK/dist" pyproject.toml)"
WHEEL="$WORK/dist/pydantic_toast-$VERSION-py3-none-any.whl"
ls -l "$WORK/dist"

# One venv per variant, made anew each run (a stale venv could hide a missing dependency).
# The venvs get no pip of their own: the tools venv's pip installs into them (pip --python).
install() {
    local variant="$1" venv="$WORK/venv-$1" requirement="$WHEEL"
    [ "$variant" = core ] || requirement="$WHEEL[$variant]"
    rm -rf "$venv"
    "$PYTHON" -m venv --without-pip "$venv"
    "$TOOLS/bin/python" -m pip --python "$venv/bin/python" install "${PIP_QUIET[@]}" "$requirement"
}

# From an empty directory, with the source tree nowhere on the path.
check() {
    local variant="$1"
    mkdir -p "$WORK/run/$variant"
    cd "$WORK/run/$variant"
    env -u PYTHONPATH PYTHONWARNINGS=error \
        "$WORK/venv-$variant/bin/python" -I "$ROOT/scripts/check_dist.py" installed "$ROOT" "$VERSION" "$variant"
}

# Runs `$1 VARIANT` for every variant, $JOBS at a time, each with its own log; then shows the
# logs of the failed ones (or, with `show`, every log) in the variants' order.
each_variant() {
    local step="$1" show="${2:-}" running=0 failed=0 variant
    for variant in "${VARIANTS[@]}"; do
        if [ "$running" -ge "$JOBS" ]; then
            wait -n || true
            running=$((running - 1))
        fi
        (
            set +e
            (set -e; "$step" "$variant") >"$WORK/run/$step-$variant.log" 2>&1
            echo "$?" >"$WORK/run/$step-$variant.status"
        ) &
        running=$((running + 1))
    done
    wait
    for variant in "${VARIANTS[@]}"; do
        if [ "$(cat "$WORK/run/$step-$variant.status")" != 0 ]; then
            echo "!! $step [$variant] failed:" >&2
            cat "$WORK/run/$step-$variant.log" >&2
            failed=1
        elif [ -n "$show" ]; then
            cat "$WORK/run/$step-$variant.log"
        fi
    done
    return "$failed"
}

echo "-- install the wheel, $JOBS at a time: ${VARIANTS[*]} (at ${SECONDS}s)"
each_variant install
echo "-- check each install from an empty directory (at ${SECONDS}s)"
each_variant check show
echo "-- done in ${SECONDS}s"
