#!/usr/bin/env bash
# The serving image's entrypoint: runs tritonserver on the image's model repository behind the gateway (gateway/, installed beside
# this script in /opt/tritoned/): the gateway serves the public ports 8000 (HTTP), 8001 (gRPC) and 8002
# (metrics), checks every request, supervises the backend processes and drains on SIGTERM. The same gateway,
# tritonserver arguments and lock-down as serve_local.sh. make_triton_image.sh copies this file, healthcheck and
# gateway/ into the build context.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# In the image the gateway package lies beside this script; in a source checkout, one directory up.
GATEWAY_HOME="$HERE"
[[ -d "$GATEWAY_HOME/gateway" ]] || GATEWAY_HOME="$(cd "$HERE/.." && pwd)"
# The image's model repository: the Dockerfile sets TRITONED_REPOSITORY, which the gateway (and the health check) read.
REPOSITORY_VARIABLE="TRITONED_REPOSITORY"
# NGC images start everything through this script (driver checks, CUDA compatibility libraries): keep it.
NVIDIA_ENTRYPOINT="/opt/nvidia/nvidia_entrypoint.sh"

usage() {
  cat <<USAGE
Usage: docker run [DOCKER_OPTIONS] IMAGE [TRITONSERVER_OPTIONS...]
       docker run [DOCKER_OPTIONS] IMAGE COMMAND [ARGS...]
       (inside the image: /opt/tritoned/serve_image.sh [-h|--help] [--] [TRITONSERVER_OPTIONS...])

Runs the gateway (python3 -m gateway, replacing this script so that it gets docker stop's SIGTERM), which
starts tritonserver on the model repository $(repository) with the options of gateway/tritonserver.py and then
TRITONSERVER_OPTIONS as given (e.g. --log-verbose=1), on internal 127.0.0.1 ports. The gateway serves
8000 (HTTP), 8001 (gRPC) and 8002 (GET /metrics); options that would change ports, model control or the
lock-down are refused. Gateway settings come from TRITONED_* variables (docker run -e TRITONED_MAX_TEXT_BYTES=...;
the list: docker run IMAGE python3 -m gateway --help).

$(lockdown_description)

Sizing: at start the gateway sizes the model instances, ONNX Runtime threads and tokenizer instances for the
CPUs the container may use (docker run --cpus N, --cpuset-cpus, a Kubernetes CPU limit); -e TRITONED_CPUS=N
sizes for N CPUs instead. The sized configs go to a directory under /tmp: the repository stays read-only.

Health: GET /v2/health/ready on 8000 (503 while broken, recovering or draining); /opt/tritoned/healthcheck
is the end-to-end liveness command (the image's HEALTHCHECK). SIGTERM: readiness 503 at once, requests in
flight answered, exit 0.

A first argument that does not start with - is run as a command instead (e.g. bash), without Triton.
Exit status: the gateway's: 0 after SIGTERM drained the requests in flight, 2 refused arguments or
TRITONED_* settings (nothing started), else tritonserver's.
USAGE
}

repository() {
  echo "${!REPOSITORY_VARIABLE:-(unset)} ($REPOSITORY_VARIABLE, set by the Dockerfile)"
}

lockdown_description() {
  PYTHONPATH="$GATEWAY_HOME" python3 -m gateway.lockdown --describe 2>/dev/null || echo "(the lock-down: gateway/lockdown.py)"
}

# Replace this process with "$@", through NVIDIA's entrypoint where the base image has one.
run() {
  if [[ -x "$NVIDIA_ENTRYPOINT" ]]; then
    exec "$NVIDIA_ENTRYPOINT" "$@"
  fi
  exec "$@"
}

main() {
  export PYTHONPATH="$GATEWAY_HOME${PYTHONPATH:+:$PYTHONPATH}"
  case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    --) shift ;;
    -*|"") ;;
    *) run "$@" ;;
  esac
  run python3 -m gateway -- tritonserver "$@"
}

main "$@"
