#!/usr/bin/env bash
# Build the documentation site into site/ with MkDocs in strict mode: a broken link, a missing
# page in the nav or an unresolved API reference fails the build. `bash scripts/docs.sh serve`
# serves it with live reload instead. The docs tools live in their own venv (.venv-docs) so the
# test venv stays lean.
EXTRAS="[docs]"
VENV="${DOCS_VENV:-.venv-docs}"
source "$(dirname "$0")/_venv.sh"
# Material's end-of-life banner on every build: noted, with the plan, in docs/about.md.
export NO_MKDOCS_2_WARNING=1
if [ "${1:-}" = "serve" ]; then
    exec "$VENV/bin/mkdocs" serve --strict
fi
exec "$VENV/bin/mkdocs" build --strict --site-dir site
