#!/usr/bin/env bash
# Lint, format check and strict type check of src/ and tests/ (and benchmarks/).
source "$(dirname "$0")/_venv.sh"
"$VENV/bin/ruff" check src tests benchmarks
"$VENV/bin/ruff" format --check src tests benchmarks
"$VENV/bin/mypy" src tests benchmarks
