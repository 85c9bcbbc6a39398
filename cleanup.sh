#!/usr/bin/env bash
# Remove everything the scripts generated, putting the template back as it was.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=utils/cli.sh
source "$ROOT/utils/cli.sh"  # BUILD_ROOT, die (exit 2), fail (exit 1), need_value, EXIT_STATUS_HELP, IMAGE_LABEL

usage() {
  cat <<USAGE
Usage: ./cleanup.sh [--images] [--all]

Removes build/ (assembled repositories, docker build contexts, local backends, the demo model,
benchmark runs, and what the README's examples write: build/artifacts, build/wheels) and Python
caches. The template in model_repository/ is never written, so afterwards
'git status' shows it as it was. Safe to run any number of times.

The Docker images that ./make_triton_image.sh built into this build/ are kept and listed;
the stand-in base images (docker/standin/build_standin.sh, shared by every checkout) are always kept.

  --images  also remove those images (docker rmi; an image a container still uses stays, and is named)
  --all     also remove the virtual environments .venv and .venv-tools (checkov)
$EXIT_STATUS_HELP
USAGE
}

# "IMAGE SIZE" lines: the images make_triton_image.sh built into $BUILD_ROOT (nothing without a Docker engine).
built_images() {
  command -v docker >/dev/null && docker info >/dev/null 2>&1 || return 0
  docker images --filter "label=$IMAGE_LABEL=$BUILD_ROOT" --format '{{.Repository}}:{{.Tag}} {{.Size}}'
}

# Lists the images built into $BUILD_ROOT; with remove=1 removes them, naming any that stays.
clean_images() {
  local remove="$1" image size images=() kept=()
  while read -r image size; do
    [[ -n "$image" ]] || continue
    if [[ "$remove" == 1 ]]; then
      if docker rmi "$image" >/dev/null 2>&1; then
        echo "cleanup.sh: removed image $image ($size)" >&2
      else
        kept+=("$image")
      fi
    else
      images+=("$image ($size)")
    fi
  done < <(built_images)
  if [[ ${#images[@]} -gt 0 ]]; then
    echo "cleanup.sh: kept the images ./make_triton_image.sh built: ${images[*]}; remove them with ./cleanup.sh --images" >&2
  fi
  if [[ ${#kept[@]} -gt 0 ]]; then
    fail "could not remove image(s) ${kept[*]}: a container uses them (docker ps -a), remove it first"
  fi
}

main() {
  local all=0 remove_images=0
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -h|--help) usage; exit 0 ;;
      --all) all=1 ;;
      --images) remove_images=1 ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done
  rm -rf -- "$BUILD_ROOT"
  find "$ROOT" -path "$ROOT/.venv" -prune -o -path "$ROOT/.venv-tools" -prune -o -path "$ROOT/.git" -prune -o \
    \( -name __pycache__ -o -name .pytest_cache \) -type d -prune -exec rm -rf {} +
  [[ "$all" == 0 ]] || rm -rf -- "$ROOT/.venv" "$ROOT/.venv-tools"
  clean_images "$remove_images"
}

main "$@"
