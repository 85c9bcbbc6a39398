# shellcheck shell=bash
# Sourced by the project's shell scripts: what they share. One way to stop with an error and one meaning for exit
# statuses:
#   0  done
#   1  a step failed while working, or the machine lacks something it needs (a tool, the virtual environment)
#   2  a usage or input error: an option, argument, input file or setting is wrong; nothing was done
# (make_triton_image.sh adds 3: the repository is assembled, but no Docker engine answers to build the image.)
# Messages go to stderr, start with the script's name and name the fix.

# shellcheck disable=SC2034  # used by the scripts that source this file, in their --help
EXIT_STATUS_HELP="Exit status: 0 done; 1 a step failed or the machine lacks something (the message says which);
2 a usage or input error: an option, argument, input file or setting is wrong (nothing was done)."

# die MESSAGE: a usage or input error (exit 2).
die() { echo "${0##*/}: $*" >&2; exit 2; }

# fail MESSAGE: a step failed, or the machine lacks something (exit 1).
fail() { echo "${0##*/}: $*" >&2; exit 1; }

# need_value "$@" (inside an option loop): the option $1 must be followed by a non-empty value.
need_value() { [[ $# -ge 2 && -n "$2" ]] || die "option $1 needs a value (see --help)"; }

# Where the scripts write everything they generate (the ignored build/ of this checkout; TRITONED_BUILD_DIR moves it),
# and the Python they run the project's tools with (.venv's, made by ./setup_venv.sh; TRITONED_PYTHON overrides it).
CLI_CHECKOUT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC2034  # used by the scripts that source this file
BUILD_ROOT="${TRITONED_BUILD_DIR:-$CLI_CHECKOUT/build}"
# shellcheck disable=SC2034  # used by the scripts that source this file
PROJECT_PYTHON="${TRITONED_PYTHON:-$CLI_CHECKOUT/.venv/bin/python}"

# The label make_triton_image.sh puts on every image it builds: its value is the build directory (TRITONED_BUILD_DIR
# or build/), whose images ./cleanup.sh lists and, with --images, removes.
# shellcheck disable=SC2034  # used by the scripts that source this file
IMAGE_LABEL="org.tritoned-bert.build-dir"

# The model name (the ensemble clients call, and the image) when none is given: make_triton_image.sh assembles
# build/$DEFAULT_MODEL_NAME, serve_local.sh serves it.
# shellcheck disable=SC2034  # used by the scripts that source this file
DEFAULT_MODEL_NAME="ensemble_model"
