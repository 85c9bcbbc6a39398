# shellcheck shell=bash
# The lock-down of every tritonserver this project starts: sourced by serve_local.sh (local server) and
# by docker/serve_image.sh (the image's entrypoint, which make_triton_image.sh copies beside it), so the
# two can never drift apart. Not a command: `source` it, then call lockdown_args.
#
# Open to everyone: inference, health, metadata (server and models), model configuration and
#   statistics (read-only; the metrics port shows the same figures), i.e. what clients and monitoring use.
# Restricted: the APIs in RESTRICTED_APIS answer 403 (HTTP) / UNAVAILABLE "...restricted" (gRPC) unless the
#   request carries the header "$ADMIN_HEADER: <key>" (gRPC: the metadata
#   "triton-grpc-protocol-$ADMIN_HEADER: <key>", Triton's prefix), the key being $TRITONED_ADMIN_KEY, or a
#   random one nobody knows when it is unset (closed). Models are never loaded or unloaded over the API
#   anyway (--model-control-mode=none): the repository the server started with is what it serves.

RESTRICTED_APIS="model-repository,shared-memory,trace,logging"
ADMIN_HEADER="tritoned-admin-key"
ADMIN_KEY_MIN_LENGTH=16

# Prints the admin key: $TRITONED_ADMIN_KEY when set (at least ADMIN_KEY_MIN_LENGTH characters of
# A-Z a-z 0-9 . _ ~ + / = : , -, e.g. `openssl rand -hex 16`), else a fresh random one.
# Returns 2 with a message on stderr when TRITONED_ADMIN_KEY is set but unfit.
make_admin_key() {
  local key="${TRITONED_ADMIN_KEY:-}" LC_ALL=C  # C: the ranges below mean ASCII letters only
  if [[ -z "$key" ]]; then
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n'
    return 0
  fi
  if [[ ${#key} -lt $ADMIN_KEY_MIN_LENGTH || ! "$key" =~ ^[A-Za-z0-9._~+/=:,-]+$ ]]; then
    echo "TRITONED_ADMIN_KEY must be at least $ADMIN_KEY_MIN_LENGTH characters of A-Z a-z 0-9 . _ ~ + / = : , - (e.g. \$(openssl rand -hex 16))" >&2
    return 2
  fi
  printf '%s' "$key"
}

# Sets the array LOCKDOWN_ARGS: the tritonserver options of the lock-down, with admin key $1.
lockdown_args() {
  local key="$1"
  # shellcheck disable=SC2034  # read by the scripts that source this file
  LOCKDOWN_ARGS=(
    --model-control-mode=none
    --http-restricted-api="$RESTRICTED_APIS:$ADMIN_HEADER=$key"
    --grpc-restricted-protocol="$RESTRICTED_APIS:$ADMIN_HEADER=$key"
  )
}
