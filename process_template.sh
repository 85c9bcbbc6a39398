#!/usr/bin/env bash
# Render every *.template file under a directory with envsubst, limited to the project's own variables.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=utils/cli.sh
source "$ROOT/utils/cli.sh"  # die (exit 2), fail (exit 1), need_value, EXIT_STATUS_HELP

# The variables a template may use. Any other `$` text (${HOME}, $1, prices...) is left as it is.
TEMPLATE_VARS=(
  MODEL_NAME MAX_BATCH_SIZE NUM_LABELS MAX_SEQUENCE_LENGTH
  PREPROCESSING_INSTANCES MODEL_INSTANCES ORT_INTRA_OP_THREADS BATCH_DELAY_US INTERNAL_MAX_BATCH_SIZE
  ENSEMBLE_TOKEN_TYPE_IDS_OUTPUT_MAP ENSEMBLE_TOKEN_TYPE_IDS_INPUT_MAP
  PREPROCESSING_TOKEN_TYPE_IDS_OUTPUT MODEL_TOKEN_TYPE_IDS_INPUT MODEL_DYNAMIC_BATCHING
  FUNCTION_TO_APPLY LABEL_THRESHOLD ENSEMBLE_LABELS_OUTPUT ENSEMBLE_LABELS_OUTPUT_MAP POSTPROCESSING_LABELS_OUTPUT
  ENSEMBLE_TEXT_PAIR_INPUT ENSEMBLE_TEXT_PAIR_INPUT_MAP PREPROCESSING_TEXT_PAIR_INPUT
  MODEL_METRICS PROBE_PARAMETER ORT_SPINNING
)

usage() {
  cat <<USAGE
Usage: ./process_template.sh DIR

Renders each DIR/**/NAME.template into DIR/**/NAME and removes the .template file.
Only these environment variables are substituted, as \${VAR} or \$VAR:
  ${TEMPLATE_VARS[*]}
A template that uses one of them while it is unset is an error (nothing is rendered);
set-but-empty is allowed. All other \$ text is copied unchanged.
make_triton_image.sh calls this on its copy of model_repository/ under build/.
$EXIT_STATUS_HELP
USAGE
}


# Print the project variables that the file uses but that are not in the environment.
unset_vars_in() {
  local file="$1" var
  for var in "${TEMPLATE_VARS[@]}"; do
    if grep -Eq "\\\$(\\{${var}\\}|${var}([^A-Za-z0-9_]|\$))" "$file" && ! printenv "$var" >/dev/null; then
      echo "$var"
    fi
  done
}

main() {
  case "${1:-}" in -h|--help) usage; exit 0 ;; "") usage >&2; die "expected a directory (see --help)" ;; esac
  local dir="$1"
  [[ -d "$dir" ]] || die "not a directory: $dir"
  command -v envsubst >/dev/null || fail "envsubst not found (Debian/Ubuntu: apt-get install gettext-base)"

  local templates=() file missing
  while IFS= read -r -d '' file; do templates+=("$file"); done \
    < <(find "$dir" -type f -name '*.template' -print0 | sort -z)
  [[ ${#templates[@]} -gt 0 ]] || die "no *.template files under $dir"

  for file in "${templates[@]}"; do
    missing="$(unset_vars_in "$file" | tr '\n' ' ')"
    [[ -z "$missing" ]] || die "$file uses unset variable(s): ${missing% }; export them first"
  done

  local shell_format
  # shellcheck disable=SC2016  # the literal ${VAR} list that tells envsubst what to replace
  shell_format="$(printf '${%s} ' "${TEMPLATE_VARS[@]}")"
  for file in "${templates[@]}"; do
    envsubst "$shell_format" < "$file" > "${file%.template}"
    rm -f -- "$file"
  done
}

main "$@"
