#!/usr/bin/env bash
# Remove everything the scripts generated, putting the template back as it was.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
  cat <<USAGE
Usage: ./cleanup.sh [--all]

Removes build/ (assembled repositories, docker build contexts, local backends, the demo model,
benchmark runs, and what the README's examples write: build/artifacts, build/wheels) and Python
caches. The template in model_repository/ is never written, so afterwards
'git status' shows it as it was. Safe to run any number of times.

  --all    also remove the virtual environments .venv and .venv-tools (checkov)
USAGE
}

die() { echo "cleanup.sh: $*" >&2; exit 2; }

main() {
  local all=0
  case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    --all) all=1 ;;
    "") ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  rm -rf -- "${TRITONED_BUILD_DIR:-$ROOT/build}"
  find "$ROOT" -path "$ROOT/.venv" -prune -o -path "$ROOT/.venv-tools" -prune -o -path "$ROOT/.git" -prune -o \
    \( -name __pycache__ -o -name .pytest_cache \) -type d -prune -exec rm -rf {} +
  [[ "$all" == 0 ]] || rm -rf -- "$ROOT/.venv" "$ROOT/.venv-tools"
}

main "$@"
