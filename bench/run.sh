#!/usr/bin/env bash
# Run the benchmark (bench/bench.py) in the project's environment; all arguments go to bench.py.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  cat <<USAGE
Usage: ./bench/run.sh [bench.py options]

Installs what the benchmark needs into .venv (./setup_venv.sh requirements-dev.txt, a no-op when up to
date), then runs bench/bench.py. Its options (bench.py --help): --quick, --quantized, --fused,
--config NAME=OPTIONS, --sets, --concurrency, --protocols, --rounds, --seconds, --no-hf, ...
Exit status: 1 when the installation fails (./setup_venv.sh), else bench.py's (2 a usage error).
USAGE
}

main() {
  case "${1:-}" in -h|--help) usage; echo; exec "$ROOT/.venv/bin/python" "$ROOT/bench/bench.py" --help ;; esac
  "$ROOT/setup_venv.sh" "$ROOT/requirements-dev.txt" >&2
  cd "$ROOT"
  exec "$ROOT/.venv/bin/python" "$ROOT/bench/bench.py" "$@"
}

main "$@"
