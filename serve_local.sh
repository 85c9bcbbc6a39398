#!/usr/bin/env bash
# Serve an assembled model repository on this machine, without Docker, on the real Triton Inference Server 2.51
# that the nvidia-pytriton wheel carries, with its Python backend (all three models run on it, as in the image:
# same repository). Like the image, it runs tritonserver behind the gateway (gateway/: request limits,
# supervisor, truthful readiness, drain), which serves the public ports.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=utils/cli.sh
source "$ROOT/utils/cli.sh"  # BUILD_ROOT, PROJECT_PYTHON, die (exit 2), fail (exit 1), need_value, EXIT_STATUS_HELP, DEFAULT_MODEL_NAME

usage() {
  cat <<USAGE
Usage: ./serve_local.sh [options] [MODEL_NAME | REPOSITORY_DIR] [-- TRITONSERVER_ARGS...]

Serves build/MODEL_NAME/context/model_repository (default MODEL_NAME: $DEFAULT_MODEL_NAME, as assembled
by ./make_triton_image.sh --no-build) or any REPOSITORY_DIR. Prints a curl line once the server is
ready; Ctrl-C stops it (requests in flight are answered first) and every backend process.

Options:
  --host ADDR          address to listen on                     (default: 127.0.0.1)
  --http-port N        HTTP/REST port                           (default: 8000)
  --grpc-port N        gRPC port                                (default: 8001)
  --metrics-port N     Prometheus metrics port                  (default: 8002)
  --cpus N             size the server for N CPUs: model instances, ONNX Runtime threads, tokenizer
                       instances (default: the CPUs this process may use: cgroup quota, CPU
                       affinity; the same as TRITONED_CPUS=N; see docs/sizing.md)
  -h, --help           this help

tritonserver runs behind the gateway (python -m gateway --help: limits, health, drain), with the same
arguments and lock-down as in the image (gateway/tritonserver.py, gateway/lockdown.py):
$(lockdown_description)
Extra arguments after -- go to tritonserver as they are (not those the gateway owns: ports, model control).
Environment: TRITONED_PYTHON (default .venv/bin/python; run ./setup_venv.sh first), TRITONED_* gateway
settings (python -m gateway --help).
$EXIT_STATUS_HELP
Once started, the status is the gateway's (0 after Ctrl-C or SIGTERM drained the requests in flight).
USAGE
}

lockdown_description() {
  PYTHONPATH="$ROOT" "$PROJECT_PYTHON" -m gateway.lockdown --describe 2>/dev/null \
    || echo "(run ./setup_venv.sh to see the lock-down)"
}

HOST=127.0.0.1
HTTP_PORT=8000
GRPC_PORT=8001
METRICS_PORT=8002
TARGET="$DEFAULT_MODEL_NAME"
EXTRA_ARGS=()

parse_args() {
  local target_set=0
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -h|--help) usage; exit 0 ;;
      --host) need_value "$@"; HOST="$2"; shift ;;
      --http-port) need_value "$@"; HTTP_PORT="$2"; shift ;;
      --grpc-port) need_value "$@"; GRPC_PORT="$2"; shift ;;
      --metrics-port) need_value "$@"; METRICS_PORT="$2"; shift ;;
      --cpus) need_value "$@"; [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "--cpus must be a whole number >= 1, got '$2'"
              export TRITONED_CPUS="$2"; shift ;;
      --) shift; EXTRA_ARGS=("$@"); break ;;
      -*) die "unknown option: $1 (see --help)" ;;
      *) [[ "$target_set" == 0 ]] || die "one MODEL_NAME or REPOSITORY_DIR only (see --help)"
         TARGET="$1"; target_set=1 ;;
    esac
    shift
  done
  local port
  for port in "$HTTP_PORT" "$GRPC_PORT" "$METRICS_PORT"; do
    if [[ ! "$port" =~ ^[0-9]+$ ]] || (( port < 1 || port > 65535 )); then
      die "not a port number: $port"
    fi
  done
}

repository_dir() {
  local dir="$TARGET"
  [[ -d "$dir" ]] || dir="$BUILD_ROOT/$TARGET/context/model_repository"
  [[ -d "$dir" ]] || die "no model repository '$TARGET': assemble one first with ./make_triton_image.sh --no-build MODEL TOKENIZER ID2LABEL $TARGET (or run ./quickstart.sh)"
  (cd "$dir" && pwd)
}

# Refuses a directory that is not an assembled model repository (e.g. a Hugging Face checkpoint) before starting:
# make_triton_image.sh writes the manifest tritoned.json at the root of each (gateway/manifest.py reads it).
check_repository() {
  local dir="$1" python="$2" problem
  local assemble="./make_triton_image.sh --no-build MODEL.onnx TOKENIZER_DIR ID2LABEL.json [MODEL_NAME], then ./serve_local.sh [MODEL_NAME]"
  if [[ ! -f "$dir/tritoned.json" ]]; then
    local what="is not a model repository"
    [[ ! -f "$dir/config.json" ]] || what="looks like a Hugging Face checkpoint, not a model repository (convert it first: .venv/bin/python utils/convert_to_onnx.py --model $dir --model-storage local --output-dir out/)"
    compgen -G "$dir/*/config.pbtxt" >/dev/null && what="is not a model repository assembled by this version of make_triton_image.sh (no tritoned.json at its root)"
    die "$dir $what: expected the models text_preprocessing, model_onnx, post_processing and an ensemble, with the manifest tritoned.json, as make_triton_image.sh assembles in build/MODEL_NAME/context/model_repository. Assemble one: $assemble"
  fi
  problem="$(PYTHONPATH="$ROOT" "$python" -c 'import sys; from gateway import manifest; manifest.load(sys.argv[1])' "$dir" 2>&1)" \
    || die "${problem##*ManifestError: }"
}

find_python() {
  local python="$PROJECT_PYTHON"
  [[ -x "$python" ]] || fail "no Python at $python: run ./setup_venv.sh first (or set TRITONED_PYTHON)"
  "$python" -c 'import pytriton, onnxruntime, tokenizers, aiohttp, grpc, tritonclient.grpc' 2>/dev/null \
    || fail "$python lacks nvidia-pytriton/onnxruntime/tokenizers/aiohttp/grpcio/tritonclient: run ./setup_venv.sh"
  echo "$python"
}

# Prints: <site-packages> <python libdir> <major.minor>
python_layout() {
  "$1" -c 'import sys, sysconfig, pytriton, pathlib
print(pathlib.Path(pytriton.__file__).parent.parent, sysconfig.get_config_var("LIBDIR"), "%d.%d" % sys.version_info[:2])'
}

# build/triton_backends: Triton's Python backend from the wheel.
prepare_backends() {
  local site="$1" version="$2" dir="$BUILD_ROOT/triton_backends"
  local stub="$site/pytriton/tritonserver/python_backend_stubs/$version/triton_python_backend_stub"
  [[ -x "$stub" ]] || fail "nvidia-pytriton has no Python backend stub for Python $version"
  rm -rf "$dir"
  mkdir -p "$dir/python"
  cp "$site/pytriton/tritonserver/backends/python/libtriton_python.so" \
     "$site/pytriton/tritonserver/backends/python/triton_python_backend_utils.py" "$stub" "$dir/python/"
  echo "$dir"
}

# Triton's Python backend keeps its shared memory in /dev/shm/<prefix><uuid> (1 MB or more each, in RAM) and
# removes it only on a clean exit: a server killed with SIGKILL leaves its regions behind. Ours are named
# tritoned_shm_<pid namespace>_<gateway pid>_<uuid>, so a later start can prove them stale (that gateway pid
# no longer exists) and remove them; regions of any other server are never touched. The pid is the gateway's,
# the parent of tritonserver (which gets SIGKILL when the gateway dies).
shm_prefix() {
  local ns
  ns="$(readlink /proc/self/ns/pid 2>/dev/null | tr -dc '0-9' || true)"
  echo "tritoned_shm_${ns:-0}_"
}

clean_stale_shm() {
  local prefix="$1" file pid
  [[ "$prefix" != tritoned_shm_0_ && -d /proc/self ]] || return 0  # no /proc: nothing is provably stale
  for file in /dev/shm/"$prefix"*; do
    [[ -f "$file" ]] || continue
    pid="${file#/dev/shm/"$prefix"}"
    pid="${pid%%_*}"
    [[ "$pid" =~ ^[0-9]+$ && ! -e "/proc/$pid" ]] || continue
    rm -f -- "$file"
    echo "serve_local.sh: removed stale $file (left by the server of pid $pid, which exited without cleaning up)" >&2
  done
}

main() {
  parse_args "$@"
  local repo python site libdir version backends shm
  python="$(find_python)"
  PYTHONPATH="$ROOT" "$python" -m gateway.lockdown || die "refusing to start"
  repo="$(repository_dir)"
  check_repository "$repo" "$python"
  read -r site libdir version < <(python_layout "$python")
  backends="$(prepare_backends "$site" "$version")"

  # The stub embeds Python and finds the environment through `python3` on PATH.
  PATH="$(dirname "$python"):$PATH"
  export PATH
  export LD_LIBRARY_PATH="$libdir:$site/nvidia_pytriton.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "Starting Triton on $repo" >&2
  shm="$(shm_prefix)"
  clean_stale_shm "$shm"
  # exec: the gateway keeps this script's pid ($$), which the shared-memory region names carry; tritonserver
  # dies with it (parent-death signal), so a region whose pid is gone is provably stale.
  PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m gateway \
    --repository "$repo" --host "$HOST" --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" \
    --metrics-port "$METRICS_PORT" -- "$site/pytriton/tritonserver/bin/tritonserver" --backend-directory="$backends" \
    --backend-config=python,shm-region-prefix-name="$shm$$_" \
    "${EXTRA_ARGS[@]}"
}

main "$@"
