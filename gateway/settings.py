"""The gateway's settings: command-line options, each with an environment variable as its default (the image
is configured with `docker run -e TRITONED_...`, since the arguments after the image name go to tritonserver)."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """What one request may be. Body limits follow each model's max_batch_size (read from Triton at start)."""

    max_text_bytes: int = 4 * MIB  # one text of a request, as sent (a 1 MB text JSON-escaped is up to ~3-6 MB)
    body_overhead_bytes: int = 1 * MIB  # the JSON around the texts; also the limit of every non-inference body
    max_json_depth: int = 32  # a valid request needs about 8 (object > inputs > input > data > rows > ...)
    request_timeout_s: float = 60.0  # to receive one request body
    upstream_timeout_s: float = 120.0  # for Triton to answer one request
    max_bytes_in_flight: int = 64 * MIB  # request bodies held at once, both ports together (gateway/budget.py)

    def body_limit(self, rows: int, texts_per_row: int) -> int:
        """Largest body of an inference request with `rows` rows of `texts_per_row` texts each."""
        return max(1, rows) * max(1, texts_per_row) * self.max_text_bytes + self.body_overhead_bytes


@dataclass(frozen=True)
class SupervisorSettings:
    watch_interval_s: float = 1.0  # how often the backend processes are checked
    probe_interval_s: float = 5.0  # how often a probe text goes through every ensemble
    probe_timeout_s: float = 10.0
    probe_failures: int = 3  # consecutive failed probes with no dead process found: exit non-zero
    recovery_timeout_s: float = 60.0  # to reload a broken model
    max_recoveries: int = 5  # per recovery_window_s; more: exit non-zero (a restart policy takes over)
    recovery_window_s: float = 600.0
    probe_text: str = "tritoned health probe"


@dataclass(frozen=True)
class Settings:
    tritonserver: list[str]  # executable and its arguments (those the gateway owns are added by it)
    host: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    limits: Limits = field(default_factory=Limits)
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    drain_delay_s: float = 1.0  # after SIGTERM, keep serving (readiness already 503) this long before closing
    drain_timeout_s: float = 15.0  # then wait at most this long for the requests in flight
    triton_exit_timeout_s: int = 5  # tritonserver --exit-timeout-secs (after the drain nothing is in flight)


def _env(name: str, default: object) -> str:
    return os.environ.get(f"TRITONED_{name}", str(default))


def build_parser() -> argparse.ArgumentParser:
    limits, supervisor = Limits(), SupervisorSettings()
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="Run tritonserver behind the tritoned front: public HTTP, gRPC and metrics ports with request "
                    "limits, a supervisor that reloads a model whose backend process died, truthful readiness and "
                    "a drain on SIGTERM. Every option also reads an environment variable (shown in brackets).",
        epilog="Example: python -m gateway --http-port 8000 -- tritonserver --model-repository=/models\n"
               "The gateway adds to tritonserver's arguments: internal ports on 127.0.0.1, "
               "--model-control-mode=explicit --load-model=*, the lock-down (gateway/lockdown.py) and the server "
               "options of gateway/tritonserver.py; arguments that would change those are refused.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--host", default=_env("HOST", "0.0.0.0"), help="address of the public ports [TRITONED_HOST] (default 0.0.0.0)")
    add("--http-port", type=int, default=int(_env("HTTP_PORT", 8000)), help="public HTTP port [TRITONED_HTTP_PORT]")
    add("--grpc-port", type=int, default=int(_env("GRPC_PORT", 8001)), help="public gRPC port [TRITONED_GRPC_PORT]")
    add("--metrics-port", type=int, default=int(_env("METRICS_PORT", 8002)),
        help="public metrics port, GET /metrics only [TRITONED_METRICS_PORT]")
    add("--max-text-bytes", type=int, default=int(_env("MAX_TEXT_BYTES", limits.max_text_bytes)),
        help="bytes allowed per text: an inference body may be max_batch_size x texts per row x this + "
             f"--body-overhead-bytes [TRITONED_MAX_TEXT_BYTES] (default {limits.max_text_bytes})")
    add("--body-overhead-bytes", type=int, default=int(_env("BODY_OVERHEAD_BYTES", limits.body_overhead_bytes)),
        help="JSON around the texts; also the largest body of any other request [TRITONED_BODY_OVERHEAD_BYTES] "
             f"(default {limits.body_overhead_bytes})")
    add("--max-json-depth", type=int, default=int(_env("MAX_JSON_DEPTH", limits.max_json_depth)),
        help=f"deepest JSON nesting accepted [TRITONED_MAX_JSON_DEPTH] (default {limits.max_json_depth})")
    add("--max-bytes-in-flight", type=int, default=int(_env("MAX_BYTES_IN_FLIGHT", limits.max_bytes_in_flight)),
        help="bytes of inference request bodies held at once (HTTP and gRPC together); more wait their turn, up to "
             "--request-timeout, then get 503 / UNAVAILABLE; a body larger than this runs alone; bodies of at most "
             "--body-overhead-bytes never wait "
             f"[TRITONED_MAX_BYTES_IN_FLIGHT] (default {limits.max_bytes_in_flight})")
    add("--request-timeout", type=float, default=float(_env("REQUEST_TIMEOUT", limits.request_timeout_s)),
        help=f"seconds to receive a request body [TRITONED_REQUEST_TIMEOUT] (default {limits.request_timeout_s:g})")
    add("--upstream-timeout", type=float, default=float(_env("UPSTREAM_TIMEOUT", limits.upstream_timeout_s)),
        help=f"seconds Triton may take to answer [TRITONED_UPSTREAM_TIMEOUT] (default {limits.upstream_timeout_s:g})")
    add("--drain-delay", type=float, default=float(_env("DRAIN_DELAY", 1)),
        help="after SIGTERM, seconds to keep serving with readiness already 503, so that load balancers stop "
             "sending first and connections being opened are still accepted [TRITONED_DRAIN_DELAY] (default 1; "
             "behind a Kubernetes Service: 5 or more)")
    add("--drain-timeout", type=float, default=float(_env("DRAIN_TIMEOUT", 15)),
        help="then seconds to wait for the requests in flight [TRITONED_DRAIN_TIMEOUT] (default 15)")
    add("--triton-exit-timeout", type=int, default=int(_env("TRITON_EXIT_TIMEOUT", 5)),
        help="tritonserver --exit-timeout-secs, once the requests in flight are answered; the gateway kills it 5 s "
             "later [TRITONED_TRITON_EXIT_TIMEOUT] (default 5)")
    add("--watch-interval", type=float, default=float(_env("WATCH_INTERVAL", supervisor.watch_interval_s)),
        help=f"seconds between checks of the backend processes [TRITONED_WATCH_INTERVAL] "
             f"(default {supervisor.watch_interval_s:g})")
    add("--probe-interval", type=float, default=float(_env("PROBE_INTERVAL", supervisor.probe_interval_s)),
        help=f"seconds between end-to-end probes [TRITONED_PROBE_INTERVAL] (default {supervisor.probe_interval_s:g})")
    add("--probe-timeout", type=float, default=float(_env("PROBE_TIMEOUT", supervisor.probe_timeout_s)),
        help=f"[TRITONED_PROBE_TIMEOUT] (default {supervisor.probe_timeout_s:g})")
    add("--probe-failures", type=int, default=int(_env("PROBE_FAILURES", supervisor.probe_failures)),
        help="consecutive failed probes, with no dead backend process to reload, before the gateway exits non-zero "
             f"[TRITONED_PROBE_FAILURES] (default {supervisor.probe_failures})")
    add("--recovery-timeout", type=float, default=float(_env("RECOVERY_TIMEOUT", supervisor.recovery_timeout_s)),
        help=f"seconds to reload a broken model [TRITONED_RECOVERY_TIMEOUT] (default {supervisor.recovery_timeout_s:g})")
    add("--max-recoveries", type=int, default=int(_env("MAX_RECOVERIES", supervisor.max_recoveries)),
        help="reloads allowed within 10 minutes before the gateway exits non-zero instead "
             f"[TRITONED_MAX_RECOVERIES] (default {supervisor.max_recoveries})")
    add("tritonserver", nargs=argparse.REMAINDER,
        help="-- then the tritonserver executable and its arguments")
    return parser


def parse(argv: list[str] | None = None) -> Settings:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = list(args.tritonserver)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error("give the tritonserver command after --, e.g. -- tritonserver --model-repository=/models")
    for name in ("http_port", "grpc_port", "metrics_port"):
        if not 0 < getattr(args, name) < 65536:
            parser.error(f"--{name.replace('_', '-')}: not a port number: {getattr(args, name)}")
    if min(args.max_text_bytes, args.body_overhead_bytes, args.max_json_depth) < 1:
        parser.error("--max-text-bytes, --body-overhead-bytes and --max-json-depth must be positive")
    if args.max_bytes_in_flight < MIB:
        parser.error(f"--max-bytes-in-flight must be at least {MIB} (1 MiB), got {args.max_bytes_in_flight}")
    return Settings(
        tritonserver=command, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        limits=Limits(max_text_bytes=args.max_text_bytes, body_overhead_bytes=args.body_overhead_bytes,
                      max_json_depth=args.max_json_depth, request_timeout_s=args.request_timeout,
                      upstream_timeout_s=args.upstream_timeout, max_bytes_in_flight=args.max_bytes_in_flight),
        supervisor=SupervisorSettings(
            watch_interval_s=args.watch_interval, probe_interval_s=args.probe_interval,
            probe_timeout_s=args.probe_timeout, probe_failures=args.probe_failures,
            recovery_timeout_s=args.recovery_timeout, max_recoveries=args.max_recoveries),
        drain_delay_s=args.drain_delay, drain_timeout_s=args.drain_timeout,
        triton_exit_timeout_s=args.triton_exit_timeout)
