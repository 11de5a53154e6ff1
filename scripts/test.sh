#!/usr/bin/env bash
# Install pydantic-toast with its test dependencies in .venv and run the whole test suite.
# PostgreSQL and Redis are found on their default ports (or TOAST_TEST_POSTGRES_URL /
# TOAST_TEST_REDIS_URL), else started from local binaries; with CI=true a missing server fails.
source "$(dirname "$0")/_venv.sh"
exec "$VENV/bin/python" -m pytest "$@"
