#!/usr/bin/env bash
# Install pydantic-toast in .venv and run the demo on the embedded SQLite default (no server).
EXTRAS="" source "$(dirname "$0")/_venv.sh"
exec "$VENV/bin/python" -m pydantic_toast demo "$@"
