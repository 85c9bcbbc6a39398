#!/usr/bin/env bash
# Set up the environment if needed and run the whole test suite against the real Triton server.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
  cat <<USAGE
Usage: ./run_tests.sh [PYTEST_ARGS...]

Installs what the tests need into .venv (./setup_venv.sh, a no-op when up to date) and runs
pytest (tests/ by default). Arguments go to pytest, e.g. ./run_tests.sh -k end_to_end -x
Exit status: 1 when the installation fails (./setup_venv.sh), else pytest's (0 all passed, 1 some failed,
2 a usage error, ...).
USAGE
}

main() {
  case "${1:-}" in -h|--help) usage; exit 0 ;; esac
  "$ROOT/setup_venv.sh" "$ROOT/requirements-dev.txt"
  cd "$ROOT"
  PATH="$ROOT/.venv/bin:$PATH" exec "$ROOT/.venv/bin/python" -m pytest "$@"
}

main "$@"
