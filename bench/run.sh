#!/usr/bin/env bash
# Run the benchmark (bench/bench.py) in the project's environment; all arguments go to bench.py. Two more tools
# share the entry point: process-cost (bench/process_cost.py) and front-ceiling (bench/front_ceiling.py).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  cat <<USAGE
Usage: ./bench/run.sh [bench.py options]
       ./bench/run.sh process-cost [process_cost.py options]
       ./bench/run.sh front-ceiling [front_ceiling.py options]

Installs what the benchmark needs into .venv (./setup_venv.sh requirements-dev.txt, a no-op when up to
date), then runs bench/bench.py. Its options (bench.py --help): --quick, --quantized, --fused,
--config NAME=OPTIONS, --sets, --concurrency, --protocols, --rounds, --seconds, --no-hf, ...; the sizing
mode: --sizes tiny,mini,base (model shapes, random weights) --cores 1,2 (server confined with taskset)
--load-processes N.
  process-cost   CPU ms per text by server process vs raw ONNX Runtime (bench/process_cost.py --help)
  front-ceiling  requests/s of the gateway alone before a trivial model (bench/front_ceiling.py --help)
Exit status: 1 when the installation fails (./setup_venv.sh), else the tool's (2 a usage error).
USAGE
}

die() { echo "bench/run.sh: $*" >&2; exit 2; }

main() {
  local script="bench/bench.py"
  case "${1:-}" in
    -h|--help) usage; echo; exec "$ROOT/.venv/bin/python" "$ROOT/$script" --help ;;
    process-cost) script="bench/process_cost.py"; shift ;;
    front-ceiling) script="bench/front_ceiling.py"; shift ;;
  esac
  [[ -x "$ROOT/.venv/bin/python" || -x "$ROOT/setup_venv.sh" ]] || die "no .venv and no setup_venv.sh in $ROOT"
  "$ROOT/setup_venv.sh" "$ROOT/requirements-dev.txt" >&2
  cd "$ROOT"
  exec "$ROOT/.venv/bin/python" "$ROOT/$script" "$@"
}

main "$@"
