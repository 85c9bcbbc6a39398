#!/usr/bin/env python3
"""Server CPU per text, process by process, for server settings side by side (e.g. the model metrics on and off).

bench.py's throughput ratios move by several percent between identical servers on a shared, busy machine, far more
than a setting that costs a fraction of a percent. The CPU a setting adds shows, instead, in the processes that run
its code: this serves the same converted model with each --config (make_triton_image.sh options), drives each in turn
with the same texts (closed loop, one text per request, interleaved round by round, the order alternating), and
prints the CPU time per text of tritonserver, of each model's backend stubs and of the rest of the server's session
(the front, when there is one), each next to the first config's. A process that runs none of the setting's code
gives the noise floor (model_onnx, for the model metrics).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/process_cost.py`
    sys.path.insert(0, str(ROOT))

from bench.loadgen import closed_loop, make_workers  # noqa: E402
from bench.local_server import LocalServer, assemble, stop_all  # noqa: E402
from bench.texts import TEXT_SETS  # noqa: E402

LOGGER = logging.getLogger("process_cost")
MODEL_NAME = "bench_model"
STUB_INSTANCE = re.compile(r"\s(\w+?)_\d+_\d+\s")  # a backend stub's command line names its instance: model_0_1


def session_cpu(session: int, models: Sequence[str]) -> Counter:
    """CPU seconds so far of every process of a session, by role: tritonserver, a model's stubs, or "other"."""
    ticks = os.sysconf("SC_CLK_TCK")
    found: Counter = Counter()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) != session:
            continue
        stub = STUB_INSTANCE.search(f" {command} ")
        role = stub.group(1) if stub and stub.group(1) in models else \
            "tritonserver" if "bin/tritonserver" in command.split(" ", 1)[0] else "other"
        found[role] += (int(fields[11]) + int(fields[12])) / ticks
    return found


def config_pair(value: str) -> tuple[str, list[str]]:
    name, sep, options = value.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise argparse.ArgumentTypeError(f"expected NAME=OPTIONS, e.g. off='--no-model-metrics', got {value!r}")
    return name, options.split()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  .venv/bin/python bench/process_cost.py --config on= --config off=--no-model-metrics\n")
    parser.add_argument("--onnx-dir", type=Path, default=ROOT / "build" / "demo" / "onnx",
                        help="utils/convert_to_onnx.py output to serve (default build/demo/onnx, made by "
                             "./quickstart.sh or ./bench/run.sh)")
    parser.add_argument("--config", type=config_pair, action="append", metavar="NAME=OPTIONS", required=True,
                        help="make_triton_image.sh options of one server; repeatable; the first is the baseline")
    parser.add_argument("--sets", default="short,long", help="text sets (default short,long)")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (default 4)")
    parser.add_argument("--seconds", type=float, default=8.0, help="about how long each server runs per round")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "build" / "process_cost")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    sets = [name for name in args.sets.split(",") if name]
    if not set(sets) <= {"short", "long"} or args.rounds < 1 or args.seconds <= 0 or args.concurrency < 1:
        parser.error("--sets takes short,long; --rounds, --seconds and --concurrency must be positive")
    if not (args.onnx_dir / "conversion_report.json").is_file():
        parser.error(f"--onnx-dir {args.onnx_dir} is not a converter output; run ./quickstart.sh or ./bench/run.sh")
    configs = dict(args.config)
    servers: dict[str, LocalServer] = {}
    try:
        for name, options in configs.items():
            build_dir = args.work_dir.resolve() / name
            repository = assemble(args.onnx_dir.resolve(), build_dir, MODEL_NAME, options)
            servers[name] = LocalServer(repository=repository, log=build_dir / "server.log", build_dir=build_dir).launch()
        for server in servers.values():
            server.wait_ready()
        models = [path.parent.name for path in next(iter(servers.values())).repository.glob("*/config.pbtxt")]
        for text_set in sets:
            texts = TEXT_SETS[text_set]()
            cpu = {name: Counter() for name in servers}
            done = Counter()
            for round_index in range(args.rounds):
                order = list(servers) if round_index % 2 == 0 else list(reversed(servers))
                for name in order:
                    server = servers[name]
                    workers = make_workers(args.protocol, server.http_url if args.protocol == "http" else
                                           server.grpc_url, MODEL_NAME, texts, args.concurrency)
                    try:
                        rate = closed_loop(workers, len(texts), 4 * args.concurrency).texts_per_second
                        total = max(args.concurrency, int(rate * args.seconds))
                        before = session_cpu(server.process.pid, models)
                        done[name] += len(closed_loop(workers, len(texts), total, warmup=0).latencies)
                        after = session_cpu(server.process.pid, models)
                    finally:
                        for worker in workers:
                            worker.close()
                    cpu[name].update({role: after[role] - before[role] for role in after})
                LOGGER.info("%s round %d/%d done", text_set, round_index + 1, args.rounds)
            print_table(text_set, cpu, done)
    finally:
        stop_all(list(servers.values()))
    return 0


def print_table(text_set: str, cpu: dict[str, Counter], done: Counter) -> None:
    names = list(cpu)
    base = names[0]
    roles = sorted({role for figures in cpu.values() for role in figures}, key=lambda r: (r == "other", r))
    per_text = {name: {role: 1000.0 * cpu[name][role] / done[name] for role in roles} for name in names}
    print(f"\nserver CPU ms per text, {text_set} texts ({', '.join(f'{n}: {done[n]} texts' for n in names)}); "
          f"vs = minus {base}")
    header = ["process"] + [column for name in names for column in ([name] if name == base else [name, "vs"])]
    rows = []
    for role in [*roles, "total"]:
        row = [role]
        for name in names:
            value = sum(per_text[name].values()) if role == "total" else per_text[name][role]
            reference = sum(per_text[base].values()) if role == "total" else per_text[base][role]
            row += [f"{value:.3f}"] if name == base else [f"{value:.3f}", f"{value - reference:+.3f}"]
        rows.append(row)
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    for line in [header, *rows]:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths)))


if __name__ == "__main__":
    sys.exit(main())
