#!/usr/bin/env bash
# The local grid in one command on a fresh Debian 12 machine: installs what is missing
# (scripts/bootstrap.sh), then runs grid-dev with the arguments given, e.g.
#   bash scripts/grid-dev.sh up                  # the example workflow from submission to settlement
#   bash scripts/grid-dev.sh up --keep-running   # then stay up for more jobs (Ctrl-C stops everything)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
export PATH="$ROOT/.tools/bin:$ROOT/.venv/bin:$PATH"
if [ "${1:-}" = "up" ]; then
    shift
    exec "$ROOT/.venv/bin/grid-dev" up --no-bootstrap "$@"
fi
exec "$ROOT/.venv/bin/grid-dev" "$@"
