"""The gateway's settings: command-line options, each with an environment variable as its default (the image
is configured with `docker run -e TRITONED_...`, since the arguments after the image name go to tritonserver)."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
from dataclasses import dataclass, field

from . import manifest, probe

MIB = 1 << 20
MAX_WORKERS = 64


@dataclass(frozen=True)
class Limits:
    """What one request may be. Body limits follow the max_batch_size of the models clients call (catalog.py)."""

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
    probe_text: str = probe.TEXT


@dataclass(frozen=True)
class Settings:
    tritonserver: list[str]  # executable and its arguments (those the gateway owns are added by it, the repository too)
    host: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    limits: Limits = field(default_factory=Limits)
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    drain_delay_s: float = 1.0  # after SIGTERM, keep serving (readiness already 503) this long before closing
    drain_timeout_s: float = 15.0  # then wait at most this long for the requests in flight
    triton_exit_timeout_s: int = 5  # tritonserver --exit-timeout-secs (after the drain nothing is in flight)
    workers: int = 0  # processes serving the public HTTP and gRPC ports; 0: sized with the CPUs (gateway/workers.py)

    def to_json(self) -> str:
        """For a worker process (gateway/worker.py): every setting, as from_json() reads it back."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Settings":
        values = json.loads(text)
        return cls(**{**values, "limits": Limits(**values["limits"]),
                      "supervisor": SupervisorSettings(**values["supervisor"])})


REPOSITORY_FLAG = "--repository"


def variable_of(flag: str) -> str:
    """The environment variable that sets the gateway's option `flag`: TRITONED_<FLAG> (the flag in upper case)."""
    return "TRITONED_" + flag[2:].replace("-", "_").upper()


def _option(parser: argparse.ArgumentParser, flag: str, kind: type, default: object, help: str,
            note: str = "") -> None:
    """--flag whose default is the variable variable_of(flag) or `default`; its help names both."""
    variable = variable_of(flag)
    shown = f"{default:g}" if isinstance(default, float) else (str(default) or "none")
    value = os.environ.get(variable)
    if value is not None:
        try:
            default = kind(value)
        except ValueError:
            parser.error(f"{variable}={value[:40]!r} is not a valid {kind.__name__} (the variable sets {flag})")
    parser.add_argument(flag, type=kind, default=default,
                        help=f"{help} [{variable}] (default {shown}{note})")


def build_parser() -> argparse.ArgumentParser:
    defaults = Settings(tritonserver=[])
    limits, supervisor = defaults.limits, defaults.supervisor
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="Run tritonserver behind the tritoned front: public HTTP, gRPC and metrics ports with request "
                    "limits, a supervisor that reloads a model whose backend process died, truthful readiness and "
                    "a drain on SIGTERM. Every option also reads an environment variable (shown in brackets).",
        epilog=f"Example: python -m gateway --http-port 8000 {REPOSITORY_FLAG} build/ensemble_model/context/"
               "model_repository -- tritonserver\n"
               "The gateway adds to tritonserver's arguments: the repository, internal ports on 127.0.0.1, "
               "--model-control-mode=explicit --load-model=*, the lock-down (gateway/lockdown.py) and the server "
               "options of gateway/tritonserver.py; arguments that would change those are refused.",
        formatter_class=argparse.RawDescriptionHelpFormatter)

    add = functools.partial(_option, parser)
    add(REPOSITORY_FLAG, str, "", "the model repository to serve (make_triton_image.sh assembles it, with its "
        f"manifest {manifest.FILE_NAME}); the gateway passes it to tritonserver. Empty: tritonserver's own "
        f"{manifest.REPOSITORY_OPTION} after --", note="; the image's Dockerfile sets it")
    add("--host", str, defaults.host, "address of the public ports")
    add("--http-port", int, defaults.http_port, "public HTTP port")
    add("--grpc-port", int, defaults.grpc_port, "public gRPC port")
    add("--metrics-port", int, defaults.metrics_port, "public metrics port, GET /metrics only")
    add("--max-text-bytes", int, limits.max_text_bytes,
        "bytes allowed per text: an inference body may be max_batch_size x texts per row x this + "
        "--body-overhead-bytes")
    add("--body-overhead-bytes", int, limits.body_overhead_bytes,
        "JSON around the texts; also the largest body of any other request")
    add("--max-json-depth", int, limits.max_json_depth, "deepest JSON nesting accepted")
    add("--max-bytes-in-flight", int, limits.max_bytes_in_flight,
        "bytes of inference request bodies held at once (HTTP and gRPC together); more wait their turn, up to "
        "--request-timeout, then get 503 / UNAVAILABLE; a body larger than this runs alone; bodies of at most "
        "--body-overhead-bytes never wait")
    add("--request-timeout", float, limits.request_timeout_s, "seconds to receive a request body")
    add("--upstream-timeout", float, limits.upstream_timeout_s, "seconds Triton may take to answer")
    add("--drain-delay", float, defaults.drain_delay_s,
        "after SIGTERM, seconds to keep serving with readiness already 503, so that load balancers stop "
        "sending first and connections being opened are still accepted", note="; behind a Kubernetes Service: 5 or more")
    add("--drain-timeout", float, defaults.drain_timeout_s, "then seconds to wait for the requests in flight")
    add("--triton-exit-timeout", int, defaults.triton_exit_timeout_s,
        "tritonserver --exit-timeout-secs, once the requests in flight are answered; the gateway kills it 5 s later")
    add("--workers", int, defaults.workers,
        "processes that serve the public HTTP and gRPC ports side by side (one supervisor and one metrics port "
        "whatever the count); 0: one per 4 CPUs this server may use, at least 1", note="; see docs/front.md")
    add("--watch-interval", float, supervisor.watch_interval_s, "seconds between checks of the backend processes")
    add("--probe-interval", float, supervisor.probe_interval_s, "seconds between end-to-end probes")
    add("--probe-timeout", float, supervisor.probe_timeout_s, "seconds a probe may take")
    add("--probe-failures", int, supervisor.probe_failures,
        "consecutive failed probes, with no dead backend process to reload, before the gateway exits non-zero")
    add("--recovery-timeout", float, supervisor.recovery_timeout_s, "seconds to reload a broken model")
    add("--max-recoveries", int, supervisor.max_recoveries,
        "reloads allowed within 10 minutes before the gateway exits non-zero instead")
    parser.add_argument("tritonserver", nargs=argparse.REMAINDER,
        help="-- then the tritonserver executable and its arguments")
    return parser


def parse(argv: list[str] | None = None) -> Settings:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = list(args.tritonserver)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error(f"give the tritonserver command after --, e.g. {REPOSITORY_FLAG} DIR -- tritonserver")
    if args.repository:
        if manifest.repository_arguments(command):
            parser.error(f"the model repository is given twice: {REPOSITORY_FLAG} {args.repository} "
                         f"[{variable_of(REPOSITORY_FLAG)}] and tritonserver's {manifest.REPOSITORY_OPTION}; "
                         "give it once")
        command = manifest.with_repository(command, args.repository)
    for name in ("http_port", "grpc_port", "metrics_port"):
        if not 0 < getattr(args, name) < 65536:
            parser.error(f"--{name.replace('_', '-')}: not a port number: {getattr(args, name)}")
    if min(args.max_text_bytes, args.body_overhead_bytes, args.max_json_depth) < 1:
        parser.error("--max-text-bytes, --body-overhead-bytes and --max-json-depth must be positive")
    if not 0 <= args.workers <= MAX_WORKERS:
        parser.error(f"--workers must be from 0 (sized with the CPUs) to {MAX_WORKERS}, got {args.workers}")
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
        triton_exit_timeout_s=args.triton_exit_timeout, workers=args.workers)
