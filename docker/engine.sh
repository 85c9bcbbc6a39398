#!/usr/bin/env bash
# Make sure a Docker engine answers `docker info`: install docker.io where dockerd is missing and start
# dockerd in the background (as root). `stop` stops only a dockerd that this script started.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=utils/cli.sh
source "$ROOT/utils/cli.sh"  # die (exit 2), fail (exit 1), need_value, EXIT_STATUS_HELP

STATE_DIR="${TRITONED_ENGINE_STATE:-/tmp/tritoned-docker-engine}"
PID_FILE="$STATE_DIR/dockerd.pid"
LOG_FILE="$STATE_DIR/dockerd.log"
START_TIMEOUT_S="${TRITONED_ENGINE_TIMEOUT:-60}"
STOP_TIMEOUT_S=30

usage() {
  cat <<USAGE
Usage: docker/engine.sh [start|stop|status]

  start   (default) if 'docker info' fails: install docker.io with apt-get where dockerd is missing,
          start dockerd in the background and wait until it answers (up to ${START_TIMEOUT_S}s).
          Prints 'started' when it started the engine, 'running' when one was already there.
  stop    stop the dockerd that 'start' started (nothing else); a no-op otherwise.
  status  exit 0 when an engine answers 'docker info'.

Needs root to install or start the engine. State (pid, log): $STATE_DIR
(TRITONED_ENGINE_STATE overrides it).
$EXIT_STATUS_HELP
('status' exits 1 when no engine answers.)
USAGE
}


engine_answers() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

our_pid() {
  local pid
  [[ -f "$PID_FILE" ]] || return 1
  pid="$(cat "$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]] || return 1
  echo "$pid"
}

install_engine() {
  command -v apt-get >/dev/null || fail "dockerd is missing and there is no apt-get to install docker.io"
  echo "engine.sh: installing docker.io with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  local apt_log="$STATE_DIR/apt.log"
  mkdir -p "$STATE_DIR"
  if ! { apt-get update && apt-get install -y docker.io; } >"$apt_log" 2>&1; then
    tail -n 20 "$apt_log" >&2
    fail "apt-get install docker.io failed (log: $apt_log)"
  fi
}

start_engine() {
  if engine_answers; then
    echo running
    return 0
  fi
  [[ "$(id -u)" == 0 ]] || fail "no Docker engine answers and starting one needs root"
  command -v dockerd >/dev/null || install_engine
  command -v docker >/dev/null || fail "no docker client on PATH"
  mkdir -p "$STATE_DIR"
  local pid
  if ! pid="$(our_pid)"; then
    # setsid: the engine outlives the shell (and pytest) that started it, until 'stop'.
    setsid dockerd >"$LOG_FILE" 2>&1 < /dev/null &
    pid="$!"
    echo "$pid" > "$PID_FILE"
  fi
  local deadline=$((SECONDS + START_TIMEOUT_S))
  while (( SECONDS < deadline )); do
    if engine_answers; then
      echo started
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  echo "engine.sh: dockerd did not come up; last lines of $LOG_FILE:" >&2
  tail -n 20 "$LOG_FILE" >&2 || true
  stop_engine >/dev/null
  fail "no Docker engine"
}

stop_engine() {
  local pid
  if ! pid="$(our_pid)"; then
    rm -f "$PID_FILE"
    echo "engine.sh: no dockerd started by this script is running" >&2
    return 0
  fi
  kill -TERM "$pid"
  local deadline=$((SECONDS + STOP_TIMEOUT_S))
  while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "engine.sh: dockerd $pid did not stop in ${STOP_TIMEOUT_S}s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_FILE"
  echo stopped
}

main() {
  case "${1:-start}" in
    -h|--help) usage ;;
    start) start_engine ;;
    stop) stop_engine ;;
    status) engine_answers ;;
    *) usage >&2; die "unknown command: $1" ;;
  esac
}

main "$@"
