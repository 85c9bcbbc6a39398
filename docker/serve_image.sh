#!/usr/bin/env bash
# The serving image's entrypoint: starts tritonserver on /models locked down as docker/lockdown.sh
# says (the same lock-down as serve_local.sh). make_triton_image.sh copies this file and lockdown.sh into
# the build context; the Dockerfile installs both in /opt/tritoned/.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lockdown.sh
source "$HERE/lockdown.sh"
MODEL_REPOSITORY="/models"
# NGC images start everything through this script (driver checks, CUDA compatibility libraries): keep it.
NVIDIA_ENTRYPOINT="/opt/nvidia/nvidia_entrypoint.sh"
SERVER_ARGS=(
  --model-repository="$MODEL_REPOSITORY"
  --disable-auto-complete-config --strict-readiness=true --exit-on-error=true --exit-timeout-secs=10
)

usage() {
  cat <<USAGE
Usage: docker run [DOCKER_OPTIONS] IMAGE [TRITONSERVER_OPTIONS...]
       docker run [DOCKER_OPTIONS] IMAGE COMMAND [ARGS...]
       (inside the image: /opt/tritoned/serve_image.sh [-h|--help] [--] [TRITONSERVER_OPTIONS...])

Starts tritonserver (replacing this script, so that it gets docker stop's SIGTERM) with
  ${SERVER_ARGS[*]}
  --model-control-mode=none
  --http-restricted-api=$RESTRICTED_APIS:$ADMIN_HEADER=<key>
  --grpc-restricted-protocol=$RESTRICTED_APIS:$ADMIN_HEADER=<key>
and then TRITONSERVER_OPTIONS as given (e.g. --log-verbose=1). They cannot lift the restriction:
tritonserver refuses to start when an API is restricted twice.

Open to everyone: inference, health, metadata, model configuration, statistics, and metrics on port 8002.
The $RESTRICTED_APIS APIs answer only to requests with the header
  $ADMIN_HEADER: <key>                       (HTTP)
  triton-grpc-protocol-$ADMIN_HEADER: <key>  (gRPC metadata)
where <key> is the TRITONED_ADMIN_KEY environment variable (docker run -e TRITONED_ADMIN_KEY=...;
at least $ADMIN_KEY_MIN_LENGTH characters, e.g. \$(openssl rand -hex 16)). Unset, the key is random and never shown: closed.

A first argument that does not start with - is run as a command instead (e.g. bash), without Triton.
USAGE
}

die() { echo "serve_image.sh: $*" >&2; exit 2; }

# Replace this process with "$@", through NVIDIA's entrypoint where the base image has one.
run() {
  if [[ -x "$NVIDIA_ENTRYPOINT" ]]; then
    exec "$NVIDIA_ENTRYPOINT" "$@"
  fi
  exec "$@"
}

main() {
  case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    --) shift ;;
    -*|"") ;;
    *) run "$@" ;;
  esac
  local key
  key="$(make_admin_key)" || die "refusing to start"
  lockdown_args "$key"
  unset TRITONED_ADMIN_KEY  # the models' Python processes inherit the environment: keep it out of theirs
  run tritonserver "${SERVER_ARGS[@]}" "${LOCKDOWN_ARGS[@]}" "$@"
}

main "$@"
