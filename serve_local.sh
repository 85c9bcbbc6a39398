#!/usr/bin/env bash
# Serve an assembled model repository on this machine, without Docker, on the real Triton Inference
# Server 2.51 that the nvidia-pytriton wheel carries, with backends/onnxruntime/model.py as the
# Python-based "onnxruntime" backend (the NGC image uses the native one: same repository).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD_ROOT="${TRITONED_BUILD_DIR:-$ROOT/build}"
# RESTRICTED_APIS, ADMIN_HEADER, make_admin_key, lockdown_args: the same lock-down as the image's.
# shellcheck source=docker/lockdown.sh
source "$ROOT/docker/lockdown.sh"

usage() {
  cat <<USAGE
Usage: ./serve_local.sh [options] [MODEL_NAME | REPOSITORY_DIR] [-- TRITONSERVER_ARGS...]

Serves build/MODEL_NAME/context/model_repository (default MODEL_NAME: ensemble_model, as assembled
by ./make_triton_image.sh --no-build) or any REPOSITORY_DIR. Prints a curl line once the server is
ready; Ctrl-C stops it and every backend process.

Options:
  --host ADDR          address to listen on                     (default: 127.0.0.1)
  --http-port N        HTTP/REST port                           (default: 8000)
  --grpc-port N        gRPC port                                (default: 8001)
  --metrics-port N     Prometheus metrics port                  (default: 8002)
  -h, --help           this help

Locked down: no model loading over the API (--model-control-mode=none), and the
$RESTRICTED_APIS APIs answer only to requests with the header
$ADMIN_HEADER: \$TRITONED_ADMIN_KEY (gRPC metadata: triton-grpc-protocol-$ADMIN_HEADER;
a random key when unset, i.e. closed). Inference, health, metadata and statistics stay open.
Extra arguments after -- go to tritonserver as they are.
Environment: TRITONED_PYTHON (default .venv/bin/python; run ./setup_venv.sh first).
USAGE
}

die() { echo "serve_local.sh: $*" >&2; exit 2; }

HOST=127.0.0.1
HTTP_PORT=8000
GRPC_PORT=8001
METRICS_PORT=8002
TARGET=ensemble_model
EXTRA_ARGS=()

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "option $1 needs a value (see --help)"; }

parse_args() {
  local target_set=0
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -h|--help) usage; exit 0 ;;
      --host) need_value "$@"; HOST="$2"; shift ;;
      --http-port) need_value "$@"; HTTP_PORT="$2"; shift ;;
      --grpc-port) need_value "$@"; GRPC_PORT="$2"; shift ;;
      --metrics-port) need_value "$@"; METRICS_PORT="$2"; shift ;;
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

find_python() {
  local python="${TRITONED_PYTHON:-$ROOT/.venv/bin/python}"
  [[ -x "$python" ]] || die "no Python at $python: run ./setup_venv.sh first (or set TRITONED_PYTHON)"
  "$python" -c 'import pytriton, onnxruntime, tokenizers' 2>/dev/null \
    || die "$python lacks nvidia-pytriton/onnxruntime/tokenizers: run ./setup_venv.sh"
  echo "$python"
}

# Prints: <site-packages> <python libdir> <major.minor>
python_layout() {
  "$1" -c 'import sys, sysconfig, pytriton, pathlib
print(pathlib.Path(pytriton.__file__).parent.parent, sysconfig.get_config_var("LIBDIR"), "%d.%d" % sys.version_info[:2])'
}

# build/triton_backends: Triton's Python backend from the wheel + our ONNX Runtime backend.
prepare_backends() {
  local site="$1" version="$2" dir="$BUILD_ROOT/triton_backends"
  local stub="$site/pytriton/tritonserver/python_backend_stubs/$version/triton_python_backend_stub"
  [[ -x "$stub" ]] || die "nvidia-pytriton has no Python backend stub for Python $version"
  rm -rf "$dir"
  mkdir -p "$dir/python" "$dir/onnxruntime"
  cp "$site/pytriton/tritonserver/backends/python/libtriton_python.so" \
     "$site/pytriton/tritonserver/backends/python/triton_python_backend_utils.py" "$stub" "$dir/python/"
  cp "$ROOT/backends/onnxruntime/model.py" "$dir/onnxruntime/model.py"
  echo "$dir"
}

wait_ready() {
  local pid="$1" url="http://$HOST:$HTTP_PORT/v2/health/ready"
  [[ "$HOST" != "0.0.0.0" ]] || url="http://127.0.0.1:$HTTP_PORT/v2/health/ready"
  while kill -0 "$pid" 2>/dev/null; do
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then
      return 0
    fi
    sleep 0.5
  done
  return 1
}

# Triton's Python backend keeps its shared memory in /dev/shm/<prefix><uuid> (1 MB or more each, in RAM) and
# removes it only on a clean exit: a server killed with SIGKILL leaves its regions behind. Ours are named
# tritoned_shm_<pid namespace>_<server pid>_<uuid>, so a later start can prove them stale (that server pid
# no longer exists) and remove them; regions of any other server are never touched.
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
    echo "serve_local.sh: removed stale $file (left by Triton pid $pid, which exited without cleaning up)" >&2
  done
}

print_try_it() {
  local repo="$1" model name
  for model in "$repo"/*/config.pbtxt; do
    grep -q 'platform: "ensemble"' "$model" && name="$(basename "$(dirname "$model")")"
  done
  cat >&2 <<TRY
Triton is ready: HTTP $HOST:$HTTP_PORT, gRPC $HOST:$GRPC_PORT, metrics $HOST:$METRICS_PORT. Try:
  curl -s -X POST http://$HOST:$HTTP_PORT/v2/models/${name:-ensemble_model}/infer -d '{"inputs":[{"name":"text_input","datatype":"BYTES","shape":[1,1],"data":["помогите мне"]}]}'
Ctrl-C stops the server.
TRY
}

main() {
  parse_args "$@"
  command -v curl >/dev/null || die "curl not found (apt-get install curl)"
  local repo python site libdir version backends admin_key
  admin_key="$(make_admin_key)" || die "refusing to start"
  lockdown_args "$admin_key"
  repo="$(repository_dir)"
  python="$(find_python)"
  read -r site libdir version < <(python_layout "$python")
  backends="$(prepare_backends "$site" "$version")"

  # The stub embeds Python and finds the environment through `python3` on PATH.
  PATH="$(dirname "$python"):$PATH"
  export PATH
  export LD_LIBRARY_PATH="$libdir:$site/nvidia_pytriton.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

  local server_args=(
    --model-repository="$repo" --backend-directory="$backends"
    --disable-auto-complete-config
    --strict-readiness=true --exit-on-error=true --exit-timeout-secs=5
    --http-address="$HOST" --http-port="$HTTP_PORT"
    --grpc-address="$HOST" --grpc-port="$GRPC_PORT"
    --metrics-address="$HOST" --metrics-port="$METRICS_PORT"
    "${LOCKDOWN_ARGS[@]}"
    "${EXTRA_ARGS[@]}"
  )
  echo "Starting Triton on $repo" >&2
  local shm
  shm="$(shm_prefix)"
  clean_stale_shm "$shm"
  # exec in a subshell: tritonserver keeps the subshell's pid ($BASHPID), which its region names carry.
  (exec "$site/pytriton/tritonserver/bin/tritonserver" \
     --backend-config=python,shm-region-prefix-name="$shm${BASHPID}_" "${server_args[@]}") &
  local pid=$!
  local interrupted=0 status=0
  trap 'interrupted=1; kill -TERM "$pid" 2>/dev/null || true' INT TERM
  if wait_ready "$pid"; then
    print_try_it "$repo"
  fi
  # A trapped signal makes `wait` return early (128+signal): wait again for the server's own exit status.
  while :; do
    interrupted=0 status=0
    wait "$pid" || status=$?
    [[ "$interrupted" == 1 ]] || break
  done
  exit "$status"
}

main "$@"
