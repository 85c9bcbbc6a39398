#!/usr/bin/env bash
# Assemble a Triton model repository (tokenizer -> ONNX model -> post-processing ensemble) from the
# template and build a Docker image that serves it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=utils/cli.sh
source "$ROOT/utils/cli.sh"  # BUILD_ROOT, PROJECT_PYTHON, die (exit 2), fail (exit 1), need_value, EXIT_STATUS_HELP, IMAGE_LABEL, DEFAULT_MODEL_NAME
RESERVED_NAMES=(text_preprocessing model_onnx post_processing)
# Directories in build/ that are not a model's: the README's converter output and wheelhouse, and the tools' own.
BUILD_DIRS=(artifacts wheels demo bench soak standin triton_backends)
NGC_IMAGE="nvcr.io/nvidia/tritonserver"
# Triton 2.71.0 (Ubuntu 24.04, Python 3.12, ONNX Runtime 1.27): the newest tagged release; it has every upstream fix
# listed in docker/release_defects.txt. README: "Безопасность" (Security). The one home of the default release: the
# Dockerfile has none and gets its base from the build argument BASE_IMAGE that docker_build always passes.
DEFAULT_RELEASE="26.07"
RELEASE_DEFECTS="$ROOT/docker/release_defects.txt"  # the known defects of older releases
# The one table of the NGC bases' Python: from release SINCE on, Python X.Y on glibc PLATFORM (newest first; older
# releases: unknown). 24.10 is Ubuntu 22.04 (Python 3.10, glibc 2.35), from 24.11 on Ubuntu 24.04 (3.12, 2.39).
NGC_PYTHONS="24.11 3.12 manylinux_2_39_x86_64
24.10 3.10 manylinux_2_35_x86_64"

usage() {
  cat <<USAGE
Usage: ./make_triton_image.sh [options] MODEL TOKENIZER ID2LABEL [MODEL_NAME] [TAG] [MAX_BATCH_SIZE]

  MODEL           model.onnx written by utils/convert_to_onnx.py (its conversion_report.json,
                  which records the parity check with PyTorch, must lie beside it)
  TOKENIZER       directory holding tokenizer.json (e.g. the converter's tokenizer/)
  ID2LABEL        JSON object {"0": "label", ..., "N-1": "label"}
  MODEL_NAME      name of the ensemble clients call, and of the image   (default: $DEFAULT_MODEL_NAME)
                  lowercase letters, digits and . _ - (not first or last); not one of:
                  ${RESERVED_NAMES[*]}
                  ${BUILD_DIRS[*]} (other directories in build/)
  TAG             image tag                                              (default: latest)
  MAX_BATCH_SIZE  most texts in one request, for every model             (default: 4)

The image is MODEL_NAME:TAG. The assembled repository and the docker build context go to
build/MODEL_NAME/context/ (replaced as a whole on every run; ./cleanup.sh removes build/).

Answers are the Hugging Face text-classification pipeline's: label (top class), score (its value),
probabilities (every class's value, in id order; top-k through Triton's classification extension).

Options:
  --text-pair              serve a model of text pairs (NLI, cross-encoder rerankers): a second
                           required input text_pair (BYTES [n, 1]); row i is tokenized as the HF
                           tokenizer does tokenizer(text_input[i], text_pair[i], truncation=True).
                           Needs the converter's passed parity check on pairs (conversion_report.json)
  --function F             softmax, sigmoid or none: override the function applied to the logits
                           (default: the pipeline's, recorded by the converter: none for regression,
                           sigmoid for multi-label or a single logit, softmax otherwise)
  --threshold T            multi-label models (sigmoid over 2+ labels): the output labels lists the
                           classes whose probability is >= T, a number from 0 to 1   (default: 0.5)
  --no-build               assemble only; serve it with ./serve_local.sh MODEL_NAME
  --triton-release R       NGC base nvcr.io/nvidia/tritonserver:R-py3        (default: $DEFAULT_RELEASE)
                           an older release gets a warning naming its known defects
                           (docker/release_defects.txt)
  --base-image IMAGE       any other base laid out like the NGC image
  --standin                the stand-in base with the same Triton 2.51, for testing where NGC
                           can't be pulled: built (or reused) by docker/standin/build_standin.sh
                           (needs root for debootstrap on its first run)
  --wheelhouse DIR         install the serving requirements offline from the wheels in DIR, made for
                           the base's Python and glibc:
$(python_table_help)
                           The wheels are checked before the build: wheels that do not fit (or none)
                           stop it with the pip download command that fills DIR for the base (the one
                           for the default base: docs/image.md). Not checked for --base-image: its
                           Python is unknown
  --preprocessing-instances N  tokenizer instances (processes)             (default: auto)
  --model-instances N      ONNX Runtime instances (processes), each runs one batch at a time
                                                                            (default: auto)
  --ort-threads N          ONNX Runtime intra-op threads per instance, 0 = one per core
                                                                            (default: auto)
  --batch-delay-us N       how long the dynamic batchers wait for more requests to join a batch
                                                                            (default: auto)
  --busy-ort-threads N     threads of each instance's second ONNX Runtime session, the one it runs while
                           another instance is busy; 0 = no second session (one copy of the weights
                           per instance)                                    (default: auto)
                           auto: sized when the server starts, from the CPUs it may use (cgroup
                           CPU quota, CPU affinity; docs/sizing.md): a lone text runs on every
                           core, and under load the model's requests of any lengths are batched
                           together on two or more instances. A number given here is kept at
                           every start; docker run -e TRITONED_CPUS=N (serve_local.sh --cpus N)
                           sizes for N CPUs instead, over these options too.
  --no-ort-spinning        ONNX Runtime's threads never spin while they wait (by default the session a
                           lone text runs on spins during its run and stops at its end; docs/sizing.md)
  --no-model-metrics       no tritoned_* metrics on the metrics port (Triton's own nv_* stay;
                           see the README's metrics section)
  -h, --help               this help

Every input is checked before anything is built; a failure names the argument and the fix.
$EXIT_STATUS_HELP
3 the repository is assembled, but no Docker engine answers to build the image.
USAGE
}


# Globals set by parse_args.
NO_BUILD=0
STANDIN=0
BASE_IMAGE="$NGC_IMAGE:$DEFAULT_RELEASE-py3"
TRITON_RELEASE="$DEFAULT_RELEASE"
WHEELHOUSE=""
TEXT_PAIR=0
FUNCTION=""
THRESHOLD=""
DEFAULT_THRESHOLD="0.5"
POSITIONAL=()
PIPELINE_FUNCTION=""  # set by export_head_settings: the pipeline's own function for this model
MULTI_LABEL=0         # set by export_head_settings: 1 for sigmoid over 2+ labels (the output labels)
# Sizing options: a number, or auto (sized at start by gateway/sizing.py; see export_sizing).
SIZE_PREPROCESSING_INSTANCES=auto SIZE_MODEL_INSTANCES=auto SIZE_ORT_THREADS=auto SIZE_BATCH_DELAY_US=auto
SIZE_BUSY_ORT_THREADS=auto
export MODEL_METRICS=true  # --no-model-metrics: false
export ORT_SPINNING=""     # --no-ort-spinning: 0; empty: model_onnx decides (docs/sizing.md)

parse_args() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -h|--help) usage; exit 0 ;;
      --no-build) NO_BUILD=1 ;;
      --text-pair) TEXT_PAIR=1 ;;
      --function) need_value "$@"; FUNCTION="$2"; shift ;;
      --threshold) need_value "$@"; THRESHOLD="$2"; shift ;;
      --triton-release) need_value "$@"; TRITON_RELEASE="$2"; BASE_IMAGE="$NGC_IMAGE:$2-py3"; shift ;;
      --base-image) need_value "$@"; BASE_IMAGE="$2"; shift ;;
      --standin) STANDIN=1 ;;
      --wheelhouse) need_value "$@"; WHEELHOUSE="$2"; shift ;;
      --preprocessing-instances) need_value "$@"; SIZE_PREPROCESSING_INSTANCES="$2"; shift ;;
      --model-instances) need_value "$@"; SIZE_MODEL_INSTANCES="$2"; shift ;;
      --ort-threads) need_value "$@"; SIZE_ORT_THREADS="$2"; shift ;;
      --batch-delay-us) need_value "$@"; SIZE_BATCH_DELAY_US="$2"; shift ;;
      --busy-ort-threads) need_value "$@"; SIZE_BUSY_ORT_THREADS="$2"; shift ;;
      --no-model-metrics) MODEL_METRICS=false ;;
      --no-ort-spinning) ORT_SPINNING=0 ;;
      --) shift; POSITIONAL+=("$@"); break ;;
      -*) die "unknown option: $1 (see --help)" ;;
      *) POSITIONAL+=("$1") ;;
    esac
    shift
  done
  if [[ ${#POSITIONAL[@]} -lt 3 || ${#POSITIONAL[@]} -gt 6 ]]; then
    usage >&2
    die "expected 3 to 6 arguments, got ${#POSITIONAL[@]}"
  fi
}

check_int() {
  local what="$1" value="$2" min="$3"
  if [[ ! "$value" =~ ^[0-9]+$ ]] || (( 10#$value < min )); then
    die "$what must be an integer >= $min, got '$value'"
  fi
}

check_size() {
  [[ "$2" == auto ]] || check_int "$1" "$2" "$3"
}

check_function() {
  [[ -z "$1" || "$1" =~ ^(softmax|sigmoid|none)$ ]] || die "--function must be softmax, sigmoid or none, got '$1'"
}

check_threshold() {
  [[ -z "$1" || "$1" =~ ^(0(\.[0-9]+)?|\.[0-9]+|1(\.0*)?)$ ]] \
    || die "--threshold must be a number from 0 to 1 (e.g. 0.5), got '$1'"
}

check_model_name() {
  local name="$1" reserved
  [[ ${#name} -le 128 && "$name" =~ ^[a-z0-9]+([._-][a-z0-9]+)*$ ]] \
    || die "MODEL_NAME '$name' is not valid for Triton and Docker: use lowercase letters, digits and . _ - (not first or last), e.g. support_intents"
  for reserved in "${RESERVED_NAMES[@]}"; do
    [[ "$name" != "$reserved" ]] || die "MODEL_NAME '$name' is taken by a model of the ensemble; pick another name"
  done
  for reserved in "${BUILD_DIRS[@]}"; do
    [[ "$name" != "$reserved" ]] || die "MODEL_NAME '$name' is reserved: the model would replace build/$name/, which is not a model's (${BUILD_DIRS[*]} in build/ hold the README's converter output and wheelhouse and the tools' own files); pick another name"
  done
}

check_tag() {
  [[ "$1" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] \
    || die "TAG '$1' is not a valid Docker tag: letters, digits, _ . - (up to 128, not starting with . or -)"
}

find_python() {
  local python="$PROJECT_PYTHON"
  [[ -x "$python" ]] || python="$(command -v python3 || true)"
  if [[ -z "$python" ]] || ! "$python" -c 'import onnx, tokenizers' 2>/dev/null; then
    fail "no Python with onnx and tokenizers found; run ./setup_venv.sh first (or set TRITONED_PYTHON)"
  fi
  echo "$python"
}

# Run utils/validate_artifacts.py and export what it reports (NUM_LABELS, FUNCTION_TO_APPLY, ...).
validate_artifacts() {
  local python="$1" model="$2" tokenizer="$3" id2label="$4" output line args=()
  [[ "$TEXT_PAIR" == 0 ]] || args+=(--text-pair)
  output="$("$python" "$ROOT/utils/validate_artifacts.py" "${args[@]}" "$model" "$tokenizer" "$id2label" 2>&1)" \
    || die "${output#error: }"
  while IFS= read -r line; do
    [[ "$line" =~ ^[A-Z_]+=[a-z0-9_]+$ ]] || die "unexpected validator output: $line"
    export "${line?}"
  done <<< "$output"
}

# The request parameter that marks the gateway's health probe (its one home: gateway/probe.py); the model metrics
# (tritoned_metrics.py) read it from their config and do not count the probe.
export_probe_parameter() {
  PROBE_PARAMETER="$(PYTHONPATH="$ROOT" "$1" -c 'from gateway.probe import PROBE_PARAMETER; print(PROBE_PARAMETER)')" \
    || fail "could not read PROBE_PARAMETER from gateway/probe.py"
  export PROBE_PARAMETER
}

# What post_processing applies to the logits (the pipeline's function unless --function overrides it), and the
# multi-label output `labels` (sigmoid over 2+ labels) with its threshold.
export_head_settings() {
  if [[ -n "$FUNCTION" && "$FUNCTION" != "$FUNCTION_TO_APPLY" ]]; then
    echo "make_triton_image.sh: note: --function $FUNCTION overrides $FUNCTION_TO_APPLY, the function the" \
      "Hugging Face pipeline applies to this model (problem_type $PROBLEM_TYPE, $NUM_LABELS label(s));" \
      "answers will differ from the pipeline's defaults" >&2
  fi
  PIPELINE_FUNCTION="$FUNCTION_TO_APPLY"
  export FUNCTION_TO_APPLY="${FUNCTION:-$FUNCTION_TO_APPLY}"
  export LABEL_THRESHOLD="${THRESHOLD:-$DEFAULT_THRESHOLD}"
  local output="  ,{ name: \"labels\", data_type: TYPE_STRING, dims: [ $NUM_LABELS ] }"
  if [[ "$FUNCTION_TO_APPLY" == sigmoid && "$NUM_LABELS" -gt 1 ]]; then
    MULTI_LABEL=1
  else
    [[ -z "$THRESHOLD" ]] || die "--threshold applies to multi-label models only (sigmoid over 2+ labels); this" \
      "model gets $FUNCTION_TO_APPLY over $NUM_LABELS label(s): drop --threshold (or pass --function sigmoid)"
  fi
  export_snippets "$MULTI_LABEL" "ENSEMBLE_LABELS_OUTPUT=$output" "POSTPROCESSING_LABELS_OUTPUT=$output" \
    'ENSEMBLE_LABELS_OUTPUT_MAP=      output_map { key: "labels" value: "labels" }'
}

# export_snippets ON NAME=VALUE...: exports each NAME as VALUE when ON is 1, else as "" (a config snippet that the
# *.template files render in place or leave out).
export_snippets() {
  local on="$1" pair
  shift
  for pair in "$@"; do
    if [[ "$on" == 1 ]]; then
      export "${pair%%=*}=${pair#*=}"
    else
      export "${pair%%=*}="
    fi
  done
}

export_text_pair_snippets() {
  local input='  ,{ name: "text_pair", data_type: TYPE_STRING, dims: [ 1 ] }'
  export_snippets "$TEXT_PAIR" "ENSEMBLE_TEXT_PAIR_INPUT=$input" "PREPROCESSING_TEXT_PAIR_INPUT=$input" \
    'ENSEMBLE_TEXT_PAIR_INPUT_MAP=      input_map { key: "text_pair" value: "text_pair" }'
}

export_token_type_ids_snippets() {
  local tensor='  ,{ name: "token_type_ids", data_type: TYPE_INT64, dims: [ -1 ] }'
  local ragged='  ,{ name: "token_type_ids", data_type: TYPE_INT64, dims: [ -1 ], allow_ragged_batch: true }'
  export_snippets "$HAS_TOKEN_TYPE_IDS" \
    'ENSEMBLE_TOKEN_TYPE_IDS_OUTPUT_MAP=      output_map { key: "token_type_ids" value: "token_type_ids" }' \
    'ENSEMBLE_TOKEN_TYPE_IDS_INPUT_MAP=      input_map { key: "token_type_ids" value: "token_type_ids" }' \
    "PREPROCESSING_TOKEN_TYPE_IDS_OUTPUT=$tensor" "MODEL_TOKEN_TYPE_IDS_INPUT=$ragged"
}

# Dynamic int8 quantization picks its activation scale per run: batched with other requests, a text's
# answer would depend on its neighbours. A quantized model_onnx therefore runs one request at a time.
export_model_batching() {
  if [[ "$QUANTIZED" == 1 ]]; then
    export MODEL_DYNAMIC_BATCHING="# No dynamic batching: the model is dynamically quantized (int8), see make_triton_image.sh."
  else
    export MODEL_DYNAMIC_BATCHING="dynamic_batching { max_queue_delay_microseconds: $BATCH_DELAY_US }"
  fi
}

# The sizes the configs are rendered with: the options' numbers, and for auto the values that suit any machine
# when served as they are (one instance, ONNX Runtime's one thread per core): the gateway renders the sized copy
# at start (gateway/sizing.py, gateway/sized_repository.py) from the manifest's sizing (write_manifest).
export_sizing() {
  # $((10#N)): a leading zero would make the config's number octal.
  export PREPROCESSING_INSTANCES="$((10#${SIZE_PREPROCESSING_INSTANCES/#auto/1}))"
  export MODEL_INSTANCES="$((10#${SIZE_MODEL_INSTANCES/#auto/1}))"
  export ORT_INTRA_OP_THREADS="$((10#${SIZE_ORT_THREADS/#auto/0}))"
  export BATCH_DELAY_US="$((10#${SIZE_BATCH_DELAY_US/#auto/0}))"
  # model_onnx's dynamic batcher may join the texts of this many client requests into one run.
  export INTERNAL_MAX_BATCH_SIZE=$(( MAX_BATCH_SIZE > 64 ? MAX_BATCH_SIZE : 64 ))
}

# Build the whole context in a fresh directory; it replaces build/MODEL_NAME only when complete.
assemble() {
  local python="$1" model="$2" tokenizer="$3" id2label="$4" staging="$5"
  local repo="$staging/context/model_repository" tokdir file
  mkdir -p "$staging/context"
  cp -R "$ROOT/model_repository" "$repo"
  mv "$repo/ensemble" "$repo/$MODEL_NAME"
  # One module serves both Python models; Triton imports it from beside each model.py.
  cp "$repo/tritoned_metrics.py" "$repo/post_processing/1/"
  mv "$repo/tritoned_metrics.py" "$repo/text_preprocessing/1/"
  mv "$repo/tritoned_heads.py" "$repo/post_processing/1/"  # id2label rules and the pipeline's functions
  mkdir -p "$repo/$MODEL_NAME/1"  # git keeps no empty version directories
  cp "$model" "$repo/model_onnx/1/model.onnx"  # beside model_onnx/1/model.py, which runs it
  cp "$id2label" "$repo/post_processing/1/id2label.json"
  "$python" "$ROOT/utils/label_file.py" "$id2label" "$repo/post_processing/labels.txt" "$repo/$MODEL_NAME/labels.txt" \
    || fail "could not write the label files from $id2label"
  tokdir="$tokenizer"
  [[ -d "$tokdir" ]] || tokdir="$(dirname "$tokenizer")"
  mkdir -p "$repo/text_preprocessing/1/tokenizer"
  for file in tokenizer.json tokenizer_config.json special_tokens_map.json; do
    [[ ! -f "$tokdir/$file" ]] || cp "$tokdir/$file" "$repo/text_preprocessing/1/tokenizer/"
  done
  find "$repo" -name '__pycache__' -prune -exec rm -rf {} +
  "$ROOT/process_template.sh" "$repo"
  write_manifest "$python" "$repo" "$id2label"
  cp "$ROOT/Dockerfile" "$ROOT/requirements-serving.txt" "$ROOT/docker/serve_image.sh" "$ROOT/docker/healthcheck" \
     "$staging/context/"
  mkdir -p "$staging/context/gateway"
  cp "$ROOT"/gateway/*.py "$staging/context/gateway/"
  mkdir -p "$staging/context/wheels"  # the Dockerfile copies it; empty unless --wheelhouse
  [[ -z "$WHEELHOUSE" ]] || cp "$WHEELHOUSE"/*.whl "$staging/context/wheels/"
}

# The repository's manifest tritoned.json (utils/write_manifest.py): the facts the run-time side reads, with
# the sizes the build fixed ("auto": the gateway sizes at start) and whether model_onnx may batch requests.
write_manifest() {
  local python="$1" repo="$2" id2label="$3" args=()
  [[ "$QUANTIZED" != 1 ]] || args+=(--no-model-batching)
  [[ "$TEXT_PAIR" == 0 ]] || args+=(--text-pair)
  [[ "$MULTI_LABEL" == 0 ]] || args+=(--label-threshold "$LABEL_THRESHOLD")
  [[ "$STANDIN" == 1 || "$BASE_IMAGE" != "$NGC_IMAGE:$TRITON_RELEASE-py3" ]] || args+=(--triton-release "$TRITON_RELEASE")
  "$python" "$ROOT/utils/write_manifest.py" "$repo" --ensemble "$MODEL_NAME" --id2label "$id2label" \
    --max-batch-size "$MAX_BATCH_SIZE" --function "$FUNCTION_TO_APPLY" --pipeline-function "$PIPELINE_FUNCTION" \
    --max-sequence-length "$MAX_SEQUENCE_LENGTH" --preprocessing-instances "$SIZE_PREPROCESSING_INSTANCES" \
    --model-instances "$SIZE_MODEL_INSTANCES" --ort-threads "$SIZE_ORT_THREADS" \
    --batch-delay-us "$SIZE_BATCH_DELAY_US" --busy-ort-threads "$SIZE_BUSY_ORT_THREADS" "${args[@]}" \
    || fail "could not write the manifest tritoned.json"
}

docker_build() {
  local context="$1" image="$2"
  # --force-rm: a failed build leaves no stopped container behind; the label lets ./cleanup.sh find the image.
  local args=(--force-rm --build-arg "BASE_IMAGE=$BASE_IMAGE" --label "$IMAGE_LABEL=$BUILD_ROOT" -t "$image")
  [[ -z "$WHEELHOUSE" ]] || args+=(--build-arg "WHEELHOUSE=1")
  echo "Building image $image from $BASE_IMAGE" >&2
  docker build "${args[@]}" "$context"
}

# Known defects of NGC release $1 (YY.MM) that later releases fix, one per line: those of docker/release_defects.txt
# whose fix came after $1 (none for $DEFAULT_RELEASE). The gateway mitigates each (README: "Безопасность").
release_defects() {
  local release="$1" fixed description
  if [[ ! "$release" =~ ^[0-9]{2}\.[0-9]{2} ]]; then
    echo "release '$release' is not YY.MM: its defects are unknown to this script"
    return 0
  fi
  while read -r fixed description; do
    [[ "$fixed" =~ ^[0-9]{2}\.[0-9]{2}$ ]] || continue  # comments and blank lines
    [[ "$(release_number "$release")" -ge "$(release_number "$fixed")" ]] || echo "$description (fixed in $fixed)"
  done < "$RELEASE_DEFECTS"
}

# YY.MM as the number YYMM, to compare releases.
release_number() {
  local yy="${1%%.*}" mm="${1#*.}"
  echo $((10#$yy * 100 + 10#${mm:0:2}))
}

warn_about_release() {
  local defects
  defects="$(release_defects "$TRITON_RELEASE")"
  [[ -n "$defects" ]] || return 0
  {
    echo "make_triton_image.sh: WARNING: Triton release $TRITON_RELEASE has known defects that $DEFAULT_RELEASE (the default) fixes:"
    while IFS= read -r line; do echo "  - $line"; done <<< "$defects"
    echo "  The gateway in front of tritonserver refuses the requests that trigger the crashes and supervises the"
    echo "  backend processes, but prefer the default release (README: Безопасность / Security)."
  } >&2
}

# The base's Python (X.Y) and newest manylinux platform (its glibc), "X.Y PLATFORM"; nothing when unknown
# (--base-image, or an NGC release older than the table's). The stand-in's: docker/standin/build_standin.sh.
base_python() {
  if [[ "$STANDIN" == 1 ]]; then
    "$ROOT/docker/standin/build_standin.sh" --print-python
  elif [[ "$BASE_IMAGE" == "$NGC_IMAGE:$TRITON_RELEASE-py3" && "$TRITON_RELEASE" =~ ^[0-9]{2}\.[0-9]{2} ]]; then
    local number since python platform
    number="$(release_number "$TRITON_RELEASE")"
    while read -r since python platform; do
      if (( number >= $(release_number "$since") )); then
        echo "$python $platform"
        return 0
      fi
    done <<< "$NGC_PYTHONS"
  fi
}

# The table for --help, one base a line; the stand-in's Python from docker/standin/build_standin.sh.
python_table_help() {
  local since python platform releases="and later" indent="                             "
  while read -r since python platform; do
    echo "${indent}NGC $since $releases: Python $python, $platform"
    releases="to before $since"
  done <<< "$NGC_PYTHONS"
  read -r python platform < <("$ROOT/docker/standin/build_standin.sh" --print-python)
  echo "${indent}--standin: Python $python, $platform"
}

# --wheelhouse DIR: its wheels must install on the base's Python (utils/check_wheelhouse.py), else stop before the
# build with the pip download command that fills it right.
check_wheelhouse() {
  local python="$1" target version platform output
  [[ -n "$WHEELHOUSE" ]] || return 0
  target="$(base_python)"
  if [[ -z "$target" ]]; then
    compgen -G "$WHEELHOUSE/*.whl" >/dev/null || die "--wheelhouse $WHEELHOUSE holds no .whl files; fill it with" \
      "pip download for the Python and glibc of $BASE_IMAGE (docs/image.md shows the command for NGC)"
    echo "make_triton_image.sh: note: the Python of $BASE_IMAGE is unknown to this script, so the wheels in" \
      "--wheelhouse are not checked against it" >&2
    return 0
  fi
  read -r version platform <<< "$target"
  output="$("$python" "$ROOT/utils/check_wheelhouse.py" "$WHEELHOUSE" --python-version "$version" \
    --platform "$platform" --requirements "$ROOT/requirements-serving.txt" --base "$(base_description)" 2>&1)" \
    || die "$output"
}

base_description() {
  if [[ "$STANDIN" == 1 ]]; then echo "the stand-in base"; else echo "$BASE_IMAGE"; fi
}

docker_reachable() {
  command -v docker >/dev/null && docker info >/dev/null 2>&1
}

main() {
  parse_args "$@"
  local model="${POSITIONAL[0]}" tokenizer="${POSITIONAL[1]}" id2label="${POSITIONAL[2]}"
  export MODEL_NAME="${POSITIONAL[3]:-$DEFAULT_MODEL_NAME}"
  local tag="${POSITIONAL[4]:-latest}"
  export MAX_BATCH_SIZE="${POSITIONAL[5]:-4}"

  check_model_name "$MODEL_NAME"
  check_tag "$tag"
  check_int MAX_BATCH_SIZE "$MAX_BATCH_SIZE" 1
  check_size --preprocessing-instances "$SIZE_PREPROCESSING_INSTANCES" 1
  check_size --model-instances "$SIZE_MODEL_INSTANCES" 1
  check_size --ort-threads "$SIZE_ORT_THREADS" 0
  check_size --batch-delay-us "$SIZE_BATCH_DELAY_US" 0
  check_size --busy-ort-threads "$SIZE_BUSY_ORT_THREADS" 0
  check_function "$FUNCTION"
  check_threshold "$THRESHOLD"
  local python
  python="$(find_python)"
  check_wheelhouse "$python"
  validate_artifacts "$python" "$model" "$tokenizer" "$id2label"
  export_probe_parameter "$python"
  [[ "$BASE_IMAGE" != "$NGC_IMAGE:$TRITON_RELEASE-py3" || "$STANDIN" == 1 ]] || warn_about_release
  export_head_settings
  export_text_pair_snippets
  export_token_type_ids_snippets
  export_sizing
  export_model_batching

  mkdir -p "$BUILD_ROOT"
  local staging target="$BUILD_ROOT/$MODEL_NAME"
  staging="$(mktemp -d "$BUILD_ROOT/.staging.XXXXXX")"
  # shellcheck disable=SC2064  # expand now: the path is fixed
  trap "rm -rf -- '$staging'" EXIT
  assemble "$python" "$model" "$tokenizer" "$id2label" "$staging"
  rm -rf -- "$target"
  mv "$staging" "$target"
  trap - EXIT
  echo "Model repository assembled: $target/context/model_repository" >&2

  if [[ "$NO_BUILD" == 1 ]]; then
    echo "Serve it locally: ./serve_local.sh $MODEL_NAME" >&2
    return 0
  fi
  if ! docker_reachable; then
    echo "make_triton_image.sh: no Docker engine is reachable ('docker info' fails), so no image was built." >&2
    echo "The repository is ready to serve locally: ./serve_local.sh $MODEL_NAME" >&2
    exit 3
  fi
  if [[ "$STANDIN" == 1 ]]; then
    BASE_IMAGE="$("$ROOT/docker/standin/build_standin.sh")" || fail "building the stand-in base failed (see above)"
  fi
  docker_build "$target/context" "$MODEL_NAME:$tag"
  echo "Image $MODEL_NAME:$tag built. Run it:" >&2
  echo "  docker run --rm --shm-size=256m -p8000:8000 -p8001:8001 -p8002:8002 $MODEL_NAME:$tag" >&2
}

main "$@"
