#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install the pinned requirements.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${TRITONED_VENV:-$ROOT/.venv}"
# shellcheck source=utils/cli.sh
source "$ROOT/utils/cli.sh"  # die (exit 2), fail (exit 1), need_value, EXIT_STATUS_HELP

usage() {
  cat <<USAGE
Usage: ./setup_venv.sh [REQUIREMENTS_FILE]

Creates the virtual environment $VENV (override with TRITONED_VENV) and installs
REQUIREMENTS_FILE into it (default: requirements-dev.txt, everything incl. tests).
Re-running is cheap: nothing is reinstalled while the requirements files are unchanged.

  requirements-serving.txt  what the Triton Python models need (the image installs this)
  requirements-local.txt    + the local Triton server (nvidia-pytriton) and ONNX Runtime
  requirements.txt          + conversion tools (torch CPU, transformers, onnx)
  requirements-dev.txt      + tests and linters
  requirements-checkov.txt  the Kubernetes scanner alone, in its own environment:
                            TRITONED_VENV=.venv-tools/checkov ./setup_venv.sh requirements-checkov.txt
$EXIT_STATUS_HELP
USAGE
}


requirements_hash() {
  cat "$ROOT"/requirements*.txt | sha256sum | cut -d' ' -f1
}

main() {
  case "${1:-}" in -h|--help) usage; exit 0 ;; esac
  local reqs="${1:-$ROOT/requirements-dev.txt}"
  [[ -f "$reqs" ]] || die "no such requirements file: $reqs"
  local python="${PYTHON:-python3}"
  command -v "$python" >/dev/null || fail "$python not found: install Python 3.10-3.12 or set PYTHON"

  local stamp want
  stamp="$VENV/.tritoned-$(basename "$reqs").sha256"
  want="$(requirements_hash)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "Creating virtual environment in $VENV" >&2
    "$python" -m venv "$VENV" || fail "could not create $VENV (Debian: apt-get install python3-venv)"
  fi
  echo "Installing $(basename "$reqs") into $VENV (first time: a few minutes)" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r "$reqs" || fail "pip install -r $reqs failed (see above)"
  echo "$want" > "$stamp"
}

main "$@"
