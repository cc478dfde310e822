#!/usr/bin/env bash
# The project's test command: installs what is missing, checks style and types, runs the tests.
# Extra arguments go to pytest (for example: scripts/test.sh tests/contracts -k settlement).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
export PATH="$ROOT/.tools/bin:$ROOT/.venv/bin:$PATH"
if [ $# -eq 0 ]; then
    ruff check .
    ruff format --check .
    mypy
fi
exec python -m pytest "$@"
