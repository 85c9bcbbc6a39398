#!/usr/bin/env bash
# Build the stand-in Triton base image (see Dockerfile.standin): a Debian rootfs made with debootstrap
# and imported into Docker, plus Triton 2.51 from the nvidia-pytriton wheel laid out like the NGC
# image (its Python backend). Cached by a hash of its inputs.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=utils/cli.sh
source "$ROOT/utils/cli.sh"  # die (exit 2), fail (exit 1), need_value, EXIT_STATUS_HELP
CACHE_DIR="${TRITONED_STANDIN_CACHE:-$ROOT/build/standin}"
SUITE="bookworm"
MIRROR="${TRITONED_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# python3 of bookworm is 3.11: the wheelhouse and the Python backend stub follow it.
PYTHON_VERSION="3.11"
ROOTFS_PACKAGES="python3,python3-pip,libpython3.11,ca-certificates,curl,procps"
PLATFORMS=(manylinux_2_36_x86_64 manylinux_2_35_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64
           manylinux_2_17_x86_64 manylinux2014_x86_64)
IMAGE_NAME="standin"
ROOTFS_NAME="standin-rootfs"

usage() {
  cat <<USAGE
Usage: docker/standin/build_standin.sh [--print-tag] [--print-python] [--force]

Builds the stand-in for nvcr.io/nvidia/tritonserver:24.10-py3 and prints its name (standin:<hash>)
on stdout; progress goes to stderr. Use it as the base of the project's image:
  ./make_triton_image.sh --base-image "\$(docker/standin/build_standin.sh)" MODEL TOKENIZER ID2LABEL

Steps (each skipped when its image already exists):
  1. debootstrap --variant=minbase $SUITE from $MIRROR (packages: $ROOTFS_PACKAGES),
     docker import -> $ROOTFS_NAME:<hash of the rootfs recipe>
  2. pip download (Python $PYTHON_VERSION, manylinux x86_64) of requirements-standin.txt into a wheelhouse,
     docker build of Dockerfile.standin (offline, from the wheelhouse) -> $IMAGE_NAME:<hash of all inputs>

Options:
  --print-tag   print the image name the current inputs give, build nothing
  --print-python  print the image's Python (X.Y) and newest manylinux platform, build nothing
  --force       rebuild both images even when they exist
  -h, --help    this help

Needs a running Docker engine (docker/engine.sh) and root for debootstrap (installed with apt-get
where missing). Work files: $CACHE_DIR (TRITONED_STANDIN_CACHE overrides it);
TRITONED_DEBIAN_MIRROR overrides the Debian mirror.
$EXIT_STATUS_HELP
USAGE
}

log() { echo "build_standin.sh: $*" >&2; }

PRINT_TAG=0
PRINT_PYTHON=0
FORCE=0

parse_args() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -h|--help) usage; exit 0 ;;
      --print-tag) PRINT_TAG=1 ;;
      --print-python) PRINT_PYTHON=1 ;;
      --force) FORCE=1 ;;
      *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
  done
}

sha() { sha256sum | cut -c1-16; }

rootfs_hash() {
  printf '%s\n' "$SUITE" "$MIRROR" "$ROOTFS_PACKAGES" "$(declare -f build_rootfs)" | sha
}

image_hash() {
  {
    rootfs_hash
    printf '%s\n' "$PYTHON_VERSION" "${PLATFORMS[@]}"
    cat "$HERE/Dockerfile.standin" "$HERE/requirements-standin.txt"
  } | sha
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

need_debootstrap() {
  command -v debootstrap >/dev/null && return 0
  command -v apt-get >/dev/null || fail "debootstrap is missing and there is no apt-get to install it"
  log "installing debootstrap with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; } \
    || fail "apt-get install debootstrap failed"
}

# debootstrap a minimal Debian and import it as an image (no Dockerfile can start from nothing here).
build_rootfs() {
  local image="$1" work="$CACHE_DIR/rootfs.tmp"
  [[ "$(id -u)" == 0 ]] || die "debootstrap needs root"
  need_debootstrap
  rm -rf -- "$work"
  mkdir -p "$work"
  log "debootstrap --variant=minbase $SUITE from $MIRROR (log: $CACHE_DIR/debootstrap.log)"
  if ! debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" "$SUITE" "$work/rootfs" "$MIRROR" \
      >"$CACHE_DIR/debootstrap.log" 2>&1; then
    tail -n 20 "$CACHE_DIR/debootstrap.log" >&2
    rm -rf -- "$work"
    die "debootstrap failed"
  fi
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"* \
         "$work/rootfs/var/log/"*.log "$work/rootfs/debootstrap"
  log "docker import -> $image"
  tar -C "$work/rootfs" --numeric-owner -c . \
    | docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' --message "debootstrap --variant=minbase $SUITE" - "$image" >/dev/null
  rm -rf -- "$work"
}

download_wheels() {
  local dest="$1" python platform_args=() platform pip_log="$CACHE_DIR/pip-download.log"
  python="$(command -v python3 || true)"
  [[ -n "$python" ]] || fail "python3 with pip is needed on the host to download the wheels"
  for platform in "${PLATFORMS[@]}"; do platform_args+=(--platform "$platform"); done
  log "pip download (Python $PYTHON_VERSION) -> $dest (log: $pip_log)"
  local common=(-d "$dest" --only-binary=:all: --implementation cp --python-version "$PYTHON_VERSION"
                "${platform_args[@]}")
  grep -vE '^(nvidia-pytriton==|#|$)' "$HERE/requirements-standin.txt" > "$dest.rest.txt"
  if ! { "$python" -m pip download "${common[@]}" --no-deps \
           "$(grep -E '^nvidia-pytriton==' "$HERE/requirements-standin.txt")" \
         && "$python" -m pip download "${common[@]}" -r "$dest.rest.txt"; } >"$pip_log" 2>&1; then
    tail -n 20 "$pip_log" >&2
    fail "pip download failed"
  fi
  rm -f "$dest.rest.txt"
}

build_image() {
  local image="$1" rootfs="$2" context="$CACHE_DIR/context"
  rm -rf -- "$context"
  mkdir -p "$context/wheels"
  download_wheels "$context/wheels"
  cp "$HERE/Dockerfile.standin" "$context/Dockerfile"
  cp "$HERE/requirements-standin.txt" "$context/"
  log "docker build -> $image (log: $CACHE_DIR/build.log)"
  if ! docker build --force-rm --build-arg "ROOTFS_IMAGE=$rootfs" -t "$image" "$context" >"$CACHE_DIR/build.log" 2>&1; then
    tail -n 30 "$CACHE_DIR/build.log" >&2
    fail "docker build of the stand-in failed"
  fi
  rm -rf -- "$context"
}

main() {
  parse_args "$@"
  if [[ "$PRINT_PYTHON" == 1 ]]; then
    echo "$PYTHON_VERSION ${PLATFORMS[0]}"
    return 0
  fi
  local rootfs image
  rootfs="$ROOTFS_NAME:$(rootfs_hash)"
  image="$IMAGE_NAME:$(image_hash)"
  if [[ "$PRINT_TAG" == 1 ]]; then
    echo "$image"
    return 0
  fi
  docker info >/dev/null 2>&1 || fail "no Docker engine answers 'docker info' (start one: docker/engine.sh)"
  if [[ "$FORCE" == 0 ]] && image_exists "$image"; then
    log "cached: $image"
    echo "$image"
    return 0
  fi
  mkdir -p "$CACHE_DIR"
  if [[ "$FORCE" == 1 ]] || ! image_exists "$rootfs"; then
    build_rootfs "$rootfs"
  else
    log "cached: $rootfs"
  fi
  build_image "$image" "$rootfs"
  log "built $image"
  echo "$image"
}

main "$@"
