#!/usr/bin/env python3
"""Server CPU per text, process by process, against raw ONNX Runtime: what the serving path costs outside the model.

A throughput ratio moves by several percent between identical servers on a shared, busy machine; the CPU each
process spends per text moves far less. This serves each model (--sizes: bench/shapes.py's tiny and mini shapes,
random weights; or --onnx-dir) with each --config (make_triton_image.sh options), drives it over each protocol with
the same texts (closed loop, one text per request, --concurrency in flight, the load generator in its own process),
and reads every server process's CPU time from /proc, by role: the gateway (all its worker processes summed, however
many there are), tritonserver, each model's backend stubs (text_preprocessing, model_onnx, post_processing; a model
with several instances counts as one row) and the rest of the server's session ("other": serve_local.sh). A process
counts with its nearest ancestor that has a role, so workers the gateway starts count as the gateway.

In the same interleaved rounds it measures raw ONNX Runtime in a separate process: one session, one thread,
tokenization included, one text at a time (raw CPU ms per text; "outside the model" = served total minus that), and
raw ONNX Runtime's best throughput configuration on this process's N CPUs (N single-thread processes side by
side), so that "served/raw" is the served throughput at --concurrency in flight over that.

With --floor it also serves the first config's repository with stand-in models that do no work (bench/floor.py:
fixed token ids, a model that only sleeps raw ORT's time per text so that requests batch as before the real one, a
fixed answer, no model metrics), in the same rounds. Its CPU per text is the floor of "outside the model": what the
design itself (the gateway, tritonserver, three Python backend stubs and the hops between them) costs on this machine
even with free models. At --concurrency 1 its model does not sleep: the floor's p50 is then the path's own latency.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/process_cost.py`
    sys.path.insert(0, str(ROOT))

from bench.floor import FloorError, floor_repository  # noqa: E402
from bench.local_server import LocalServer, ServerError, assemble, stop_all  # noqa: E402
from bench.pool import Pool, PoolError  # noqa: E402
from bench.shapes import SIZES, ShapeError, ensure_size  # noqa: E402
from bench.texts import TEXT_SETS  # noqa: E402

LOGGER = logging.getLogger("process_cost")
MODEL_NAME = "bench_model"
STUB_INSTANCE = re.compile(r"\s(\w+?)_\d+_\d+\s")  # a backend stub's command line names its instance: model_0_1
STUB_MODEL_FILE = re.compile(r"/(\w+)/\d+/model\.\w+(\s|$)")  # ... its model file: REPOSITORY/model/1/model.py
GATEWAY_COMMAND = re.compile(r"(^|\s)-m\s+gateway(\.\w+)*(\s|$)|(^|[\s/])gateway/__main__\.py(\s|$)")
MODELS = ("text_preprocessing", "model_onnx", "post_processing")
FLOOR = "floor"  # the config name of the stand-in server (--floor)
ROLES = ("gateway", "tritonserver", *MODELS, "other")


def _read(pid: str) -> tuple[int, int, float, str] | None:
    """(parent pid, session id, CPU seconds, command line) of a process; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    return int(fields[1]), int(fields[3]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), command


def own_role(command: str) -> str | None:
    """The role a command line itself shows: a model's backend stub (the model's name), tritonserver, the gateway
    (any of its processes: python -m gateway, -m gateway.worker, ...); None otherwise."""
    if "triton_python_backend_stub" in command.split(" ", 1)[0]:
        stub = STUB_INSTANCE.search(f" {command} ") or STUB_MODEL_FILE.search(command)
        if stub:
            return stub.group(1)
    if command.split(" ", 1)[0].endswith("tritonserver"):
        return "tritonserver"
    if GATEWAY_COMMAND.search(command):
        return "gateway"
    return None


def session_processes(session: int) -> list[tuple[str, float]]:
    """(role, CPU seconds so far) of every process of a session. A role is own_role's (the gateway, tritonserver,
    a model's stub by the model's name); a process without one counts with its nearest ancestor that has one (e.g.
    the gateway's worker processes), else as "other"."""
    processes = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = _read(entry.name)
            if info is not None and info[1] == session:
                processes[int(entry.name)] = info
    roles: dict[int, str] = {}

    def role_of(pid: int) -> str:
        if pid not in roles:
            parent, _, _, command = processes[pid]
            roles[pid] = own_role(command) or (role_of(parent) if parent in processes else "other")
        return roles[pid]

    return [(role_of(pid), cpu) for pid, (_, _, cpu, _) in processes.items()]


def session_cpu(session: int) -> Counter:
    """CPU seconds so far of a session's processes, summed by role (session_processes)."""
    found: Counter = Counter()
    for role, cpu in session_processes(session):
        found[role] += cpu
    return found


def config_pair(value: str) -> tuple[str, list[str]]:
    name, sep, options = value.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise argparse.ArgumentTypeError(f"expected NAME=OPTIONS, e.g. off='--no-model-metrics', got {value!r}")
    return name, options.split()


def csv(value: str) -> list[str]:
    return [item for item in value.split(",") if item]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  .venv/bin/python bench/process_cost.py --sizes tiny,mini --protocols http,grpc\n"
               "  .venv/bin/python bench/process_cost.py --config on= --config off=--no-model-metrics\n"
               "  .venv/bin/python bench/process_cost.py --sizes tiny --quick      # smoke test\n")
    parser.add_argument("--sizes", type=csv, default=None,
                        help=f"model sizes to build and serve ({','.join(SIZES)}, random weights; bench/shapes.py); "
                             "default: --onnx-dir")
    parser.add_argument("--onnx-dir", type=Path, default=ROOT / "build" / "demo" / "onnx",
                        help="utils/convert_to_onnx.py output to serve when --sizes is not given (default "
                             "build/demo/onnx, made by ./quickstart.sh or ./bench/run.sh)")
    parser.add_argument("--config", type=config_pair, action="append", metavar="NAME=OPTIONS",
                        help="make_triton_image.sh options of one server; repeatable (default: default= , the "
                             "template's defaults)")
    parser.add_argument("--sets", type=csv, default=["short"], help="text sets: short, long (default short)")
    parser.add_argument("--protocols", type=csv, default=["http"], help="http, grpc or both (default http)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 4; --quick 1)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="about how long each engine runs per round (default 8; --quick 0.5)")
    parser.add_argument("--floor", action="store_true",
                        help="also serve the first config's repository with stand-in models that do no work "
                             "(bench/floor.py): the CPU per text the serving path costs with free models")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 round of about 0.5 s per engine")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "build" / "process_cost",
                        help="assembled repositories and server logs (default build/process_cost); the --sizes "
                             "models are cached in build/bench/sizes")
    return parser


@dataclass
class Tally:
    """CPU seconds by role, texts, wall seconds of one engine over all rounds."""

    cpu: Counter = field(default_factory=Counter)
    texts: int = 0
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def ms_per_text(self, role: str | None = None) -> float:
        value = sum(self.cpu.values()) if role is None else self.cpu[role]
        return 1000.0 * value / self.texts if self.texts else 0.0

    @property
    def texts_per_second(self) -> float:
        return self.texts / self.wall if self.wall else 0.0

    @property
    def p50_ms(self) -> float:
        return 1000.0 * statistics.median(self.latencies) if self.latencies else 0.0


def total_for(pool: Pool, concurrency: int, seconds: float) -> int:
    probe = pool.run(max(8, concurrency), warmup=1)  # untimed: warms the engine up, gives its rate
    return max(concurrency, int(probe.texts_per_second * seconds))


def measure_model(onnx_dir: Path, label: str, configs: dict[str, list[str]], protocols: list[str],
                  text_set: str, args: argparse.Namespace) -> dict[str, Tally]:
    """Tallies of "raw 1x1", "raw Nx1" and every "PROTOCOL CONFIG", interleaved round by round."""
    texts = TEXT_SETS[text_set]()
    if args.quick:
        texts = texts[:16]
    cpus = sorted(os.sched_getaffinity(0))
    servers: dict[str, LocalServer] = {}
    pools: dict[str, Pool] = {}
    tallies: dict[str, Tally] = {}
    totals: dict[str, int] = {}
    try:
        for name, options in configs.items():
            build_dir = args.work_dir.resolve() / f"{label}-{name}"
            repository = assemble(onnx_dir, build_dir, MODEL_NAME, options)
            servers[name] = LocalServer(repository=repository, log=build_dir / "server.log",
                                        build_dir=build_dir).launch()
        pools["raw 1x1"] = Pool.raw(onnx_dir, texts, processes=1, threads=1, cpus=cpus)
        pools[f"raw {len(cpus)}x1"] = Pool.raw(onnx_dir, texts, processes=len(cpus), threads=1, cpus=cpus)
        if args.floor:
            seconds_per_text = 0.0  # one in flight: nothing to batch, the floor's p50 is the path's own latency
            if args.concurrency > 1:  # raw ORT's time per text, from a rate probe on a quiet machine
                for server in servers.values():
                    server.wait_ready()
                totals["raw 1x1"] = total_for(pools["raw 1x1"], 1, args.seconds)
                seconds_per_text = args.seconds / totals["raw 1x1"]
            first = next(iter(servers.values()))
            build_dir = args.work_dir.resolve() / f"{label}-{FLOOR}"
            repository = floor_repository(first.repository, build_dir / "model_repository", seconds_per_text)
            LOGGER.info("%s: the floor's model sleeps %.2f ms per text (raw ONNX Runtime, one thread)", label,
                        1000 * seconds_per_text)
            servers[FLOOR] = LocalServer(repository=repository, log=build_dir / "server.log",
                                         build_dir=build_dir).launch()
        for server in servers.values():
            server.wait_ready()
        for protocol in protocols:
            for name, server in servers.items():
                url = server.http_url if protocol == "http" else server.grpc_url
                pools[f"{protocol} {name}"] = Pool.load(protocol, url, MODEL_NAME, texts, args.concurrency, 1, cpus)
        for key, pool in pools.items():
            if key not in totals:
                totals[key] = total_for(pool, 1 if key.startswith("raw") else args.concurrency, args.seconds)
        for round_index in range(args.rounds):
            order = list(pools) if round_index % 2 == 0 else list(reversed(pools))
            for key in order:
                tally = tallies.setdefault(key, Tally())
                server = servers.get(key.split(" ", 1)[1]) if not key.startswith("raw") else None
                before = session_cpu(server.process.pid) if server else Counter()
                measurement = pools[key].run(totals[key])
                if server:
                    after = session_cpu(server.process.pid)
                    tally.cpu.update({role: after[role] - before[role] for role in after})
                else:
                    tally.cpu["raw"] += measurement.client_cpu_seconds
                tally.texts += len(measurement.latencies)
                tally.latencies.extend(measurement.latencies)
                tally.wall += measurement.wall
                time.sleep(0.2)  # spinning thread pools stop
            LOGGER.info("%s %s round %d/%d done", label, text_set, round_index + 1, args.rounds)
    finally:
        for pool in pools.values():
            pool.close()
        stop_all(list(servers.values()))
    return tallies


COLUMNS = ("model", "protocol", "config", "raw", "served", "outside the model", "raw Nx1", "outside vs Nx1", *ROLES,
           "served texts/s", "raw Nx1 texts/s", "served/raw", "p50 ms")


def table(rows: list[tuple[str, dict[str, Tally]]], protocols: list[str], configs: list[str]) -> str:
    """One line per model, protocol and config; the floor's line (config FLOOR) has no model work, so its "outside
    the model" is its whole CPU per text and the columns that compare with raw ORT are "-"."""
    lines = []
    for label, tallies in rows:
        raw = tallies["raw 1x1"]
        best = next(tally for key, tally in tallies.items() if key.startswith("raw") and key != "raw 1x1")
        for protocol in protocols:
            for name in configs:
                served = tallies[f"{protocol} {name}"]
                total, roles = served.ms_per_text(), [served.ms_per_text(role) for role in ROLES[:-1]]
                floor = name == FLOOR
                lines.append((label, protocol, name, "-" if floor else f"{raw.ms_per_text():.2f}", f"{total:.2f}",
                              f"{total if floor else total - raw.ms_per_text():+.2f}",
                              "-" if floor else f"{best.ms_per_text():.2f}",
                              "-" if floor else f"{total - best.ms_per_text():+.2f}",
                              *(f"{value:.3f}" for value in roles), f"{max(0.0, total - sum(roles)):.3f}",
                              f"{served.texts_per_second:.1f}", "-" if floor else f"{best.texts_per_second:.1f}",
                              f"{served.texts_per_second / best.texts_per_second:.2f}"
                              if best.texts_per_second and not floor else "-", f"{served.p50_ms:.2f}"))
    widths = [max(len(column), *(len(line[i]) for line in lines)) for i, column in enumerate(COLUMNS)]
    text = ["  ".join(column.rjust(width) for column, width in zip(COLUMNS, widths)),
            "  ".join("-" * width for width in widths)]
    text.extend("  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in lines)
    return "\n".join(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    args.rounds = args.rounds if args.rounds is not None else (1 if args.quick else 4)
    args.seconds = args.seconds if args.seconds is not None else (0.5 if args.quick else 8.0)
    if not args.sets or not set(args.sets) <= {"short", "long"}:
        parser.error(f"--sets takes short,long, got {','.join(args.sets) or 'nothing'}")
    if not args.protocols or not set(args.protocols) <= {"http", "grpc"}:
        parser.error(f"--protocols takes http,grpc, got {','.join(args.protocols) or 'nothing'}")
    if args.rounds < 1 or args.seconds <= 0 or args.concurrency < 1:
        parser.error("--rounds, --seconds and --concurrency must be positive")
    if args.sizes is not None and (not args.sizes or not set(args.sizes) <= set(SIZES)):
        parser.error(f"--sizes takes {','.join(SIZES)}, got {','.join(args.sizes) or 'nothing'}")
    if args.sizes is None and not (args.onnx_dir / "conversion_report.json").is_file():
        parser.error(f"--onnx-dir {args.onnx_dir} is not a converter output; run ./quickstart.sh or ./bench/run.sh, "
                     "or give --sizes tiny,mini")
    configs = dict(args.config or [("default", [])])
    if FLOOR in configs:
        parser.error(f"--config {FLOOR}=... : the name '{FLOOR}' is the stand-in server of --floor; choose another")
    cpus = len(os.sched_getaffinity(0))
    try:
        models = [(size, ensure_size(size, ROOT / "build" / "bench")[1]) for size in args.sizes] \
            if args.sizes else [(args.onnx_dir.resolve().name, args.onnx_dir.resolve())]
        for text_set in args.sets:
            rows = [(label, measure_model(onnx_dir, label, configs, args.protocols, text_set, args))
                    for label, onnx_dir in models]
            print(f"\nCPU ms per text by process, {text_set} texts, one text per request, {args.concurrency} in flight, "
                  f"{args.rounds} interleaved round(s) of about {args.seconds:g} s per engine, {cpus} CPU(s).\n"
                  "raw: ONNX Runtime in one process, one thread, tokenization included, alone on the machine; served: "
                  "the sum of the server's processes (gateway: all its processes; a model: all its stubs; other: the "
                  "rest of the session); outside the model = served - raw; raw Nx1: CPU per text of raw ORT's best "
                  f"throughput configuration ({cpus} single-thread processes side by side: the model's own work when "
                  f"{cpus} texts run at once, as under load); outside vs Nx1 = served - raw Nx1; served/raw: texts/s "
                  "served over raw Nx1's; p50 ms: the served requests' median latency.")
            for name, options in configs.items():
                print(f"config {name}: make_triton_image.sh {' '.join(options) or '(template defaults)'}")
            if args.floor:
                sleep = "does not sleep" if args.concurrency == 1 else "sleeps raw's time per text"
                print(f"config {FLOOR}: config {next(iter(configs))}'s repository with stand-in models that do no "
                      f"work (bench/floor.py; its model {sleep}): the serving path's own CPU per text, with free "
                      "models")
            print(table(rows, args.protocols, [*configs, *([FLOOR] if args.floor else [])]))
    except (ServerError, ShapeError, PoolError, FloorError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
