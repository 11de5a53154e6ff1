#!/usr/bin/env bash
# Build the sdist and the wheel (the wheel from the sdist, as `python -m build` does), check their
# metadata with `twine check --strict` and their contents, then install the wheel into fresh venvs
# — no extra, and each of [postgresql], [redis], [cli], [s3], [all] — and, from an empty directory with
# no source tree on the path, check the installed package: its version, which drivers each extra
# brings, that the core imports none of them, and that the README quickstart and the demo run.
# Work happens under $CHECK_DIST_DIR (default /tmp/pydantic-toast-dist); pip's cache is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PYTHON="${PYTHON:-python3}"
WORK="${CHECK_DIST_DIR:-/tmp/pydantic-toast-dist}"
VARIANTS=(core postgresql redis cli s3 all)
PIP_QUIET=(--quiet --disable-pip-version-check)

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
install_variant() {
    local variant="$1" venv="$WORK/venv-$1" requirement="$WHEEL"
    [ "$variant" = core ] || requirement="$WHEEL[$variant]"
    rm -rf "$venv"
    "$PYTHON" -m venv --without-pip "$venv"
    "$TOOLS/bin/python" -m pip --python "$venv/bin/python" install "${PIP_QUIET[@]}" "$requirement"
}

echo "-- install the wheel: ${VARIANTS[*]} (at ${SECONDS}s)"
pids=()
for variant in "${VARIANTS[@]}"; do
    install_variant "$variant" >"$WORK/run/install-$variant.log" 2>&1 &
    pids+=("$!")
done
failed=0
for i in "${!VARIANTS[@]}"; do
    if ! wait "${pids[$i]}"; then
        echo "installing [${VARIANTS[$i]}] failed:" >&2
        cat "$WORK/run/install-${VARIANTS[$i]}.log" >&2
        failed=1
    fi
done
[ "$failed" = 0 ] || exit 1

echo "-- check each install from an empty directory (at ${SECONDS}s)"
for variant in "${VARIANTS[@]}"; do
    mkdir -p "$WORK/run/$variant"
    (cd "$WORK/run/$variant" && env -u PYTHONPATH PYTHONWARNINGS=error \
        "$WORK/venv-$variant/bin/python" -I "$ROOT/scripts/check_dist.py" installed \
        "$ROOT/README.md" "$VERSION" "$variant")
done
echo "-- done in ${SECONDS}s"
