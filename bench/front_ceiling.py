#!/usr/bin/env python3
"""The front's own ceiling: requests/s of the gateway alone, in front of a trivial upstream model, by worker count.

The upstream is the smallest ensemble the gateway serves: one step, a Python-backend model that answers every text
with a fixed label, score and probabilities (no tokenizer, no ONNX Runtime), so that nearly all the work left is the
front's and Triton's own. For each --workers count W a server (serve_local.sh: gateway and tritonserver) is started
with the gateway's worker count in the environment (--workers-env, default TRITONED_WORKERS=W), confined to --cores
CPUs; the load generator (closed loop, one text per request, --concurrency in flight, in its own processes) runs on
the other CPUs, or on the same ones when none are left. Rounds are interleaved across the servers, and each round
is also sent straight to tritonserver's internal port ("direct": the upstream's own ceiling, without the front).
It prints requests/s, p50/p99, and CPU per request of the gateway (all its processes) and of tritonserver and the
stub, read from /proc.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/front_ceiling.py`
    sys.path.insert(0, str(ROOT))

from bench.loadgen import Measurement  # noqa: E402
from bench.local_server import LocalServer, ServerError, stop_all  # noqa: E402
from bench.matrix import describe_cpus, split_cpus  # noqa: E402
from bench.pool import Pool, PoolError  # noqa: E402
from bench.process_cost import session_cpu, session_processes  # noqa: E402
from bench.texts import short_texts  # noqa: E402

LOGGER = logging.getLogger("front_ceiling")
MODEL_NAME = "bench_model"
ECHO = "echo"
ECHO_MODEL = '''"""Answers every text with a fixed label, score and probabilities: an upstream that costs next to nothing."""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().shape[0]
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("label", np.full((rows, 1), b"ok", dtype=np.object_)),
                pb_utils.Tensor("score", np.ones((rows, 1), dtype=np.float32)),
                pb_utils.Tensor("probabilities", np.ones((rows, 1), dtype=np.float32))]))
        return responses
'''
ECHO_CONFIG = '''name: "echo"
backend: "python"
max_batch_size: 64
dynamic_batching {{ }}
instance_group [{{ count: {instances}, kind: KIND_CPU }}]
input [{{ name: "text_input", data_type: TYPE_STRING, dims: [ 1 ] }}]
output [
  {{ name: "label", data_type: TYPE_STRING, dims: [ 1 ] }},
  {{ name: "score", data_type: TYPE_FP32, dims: [ 1 ] }},
  {{ name: "probabilities", data_type: TYPE_FP32, dims: [ -1 ] }}
]
'''
ENSEMBLE_CONFIG = '''name: "bench_model"
platform: "ensemble"
max_batch_size: 64
input [{ name: "text_input", data_type: TYPE_STRING, dims: [ 1 ] }]
output [
  { name: "label", data_type: TYPE_STRING, dims: [ 1 ] },
  { name: "score", data_type: TYPE_FP32, dims: [ 1 ] },
  { name: "probabilities", data_type: TYPE_FP32, dims: [ -1 ] }
]
ensemble_scheduling { step [{
  model_name: "echo", model_version: -1,
  input_map { key: "text_input", value: "text_input" },
  output_map [{ key: "label", value: "label" }, { key: "score", value: "score" },
              { key: "probabilities", value: "probabilities" }]
}] }
'''


def write_repository(directory: Path, instances: int) -> Path:
    """The trivial upstream: ensemble bench_model -> echo (Python backend, `instances` stubs)."""
    for name, files in {ECHO: {"config.pbtxt": ECHO_CONFIG.format(instances=instances), "1/model.py": ECHO_MODEL},
                        MODEL_NAME: {"config.pbtxt": ENSEMBLE_CONFIG, "1/.keep": ""}}.items():
        for relative, text in files.items():
            path = directory / name / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    write_manifest(directory)
    return directory


def write_manifest(directory: Path) -> None:
    """tritoned.json, as make_triton_image.sh writes it (serve_local.sh serves no repository without one)."""
    id2label = directory.parent / "id2label.json"
    id2label.write_text('{"0": "echo"}', encoding="utf-8")
    subprocess.run([sys.executable, str(ROOT / "utils" / "write_manifest.py"), "--ensemble", MODEL_NAME,
                    "--id2label", str(id2label), "--max-batch-size", "64", "--function", "none",
                    "--pipeline-function", "none", "--max-sequence-length", "8", str(directory)],
                   check=True, capture_output=True, text=True)


@dataclass
class Tally:
    measurement: Measurement = field(default_factory=Measurement)
    cpu: Counter = field(default_factory=Counter)
    cpu_wall: float = 0.0
    gateway_processes: int = 0  # counted in the server's process tree at the end of the last round


def env_assignment(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise argparse.ArgumentTypeError(f"expected an environment variable name, e.g. TRITONED_WORKERS, got {value!r}")
    return value


def positive_list(value: str) -> list[int]:
    try:
        numbers = [int(item) for item in value.split(",") if item]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {value!r}") from error
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {value!r}")
    return numbers


def build_parser() -> argparse.ArgumentParser:
    allowed = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  .venv/bin/python bench/front_ceiling.py --workers 1,2\n"
               "  .venv/bin/python bench/front_ceiling.py --workers 1,4,8 --cores 8 --protocols http,grpc\n"
               "  .venv/bin/python bench/front_ceiling.py --quick      # smoke test\n")
    parser.add_argument("--workers", type=positive_list, default=[1, allowed] if allowed > 1 else [1],
                        help=f"gateway worker counts, one server each (default 1,{allowed}: 1 and one per CPU)")
    parser.add_argument("--workers-env", type=env_assignment, default="TRITONED_WORKERS",
                        help="the environment variable that gives the gateway its worker count (default "
                             "TRITONED_WORKERS)")
    parser.add_argument("--cores", type=int, default=allowed,
                        help=f"CPUs the server may use (the first N of this process's; default all {allowed}); the "
                             "load generator gets the others, or shares them when none are left")
    parser.add_argument("--instances", type=int, default=1, help="stubs of the trivial upstream model (default 1)")
    parser.add_argument("--protocols", default="http", help="http, grpc or both (default http)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (default 64)")
    parser.add_argument("--load-processes", type=int, default=0,
                        help="processes of the load generator (default 0: one per CPU it runs on, at least 2)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; --quick 1)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="about how long each server runs per round (default 5; --quick 0.5)")
    parser.add_argument("--no-direct", action="store_true", help="skip the rounds straight to tritonserver")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 round of about 0.5 s")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "build" / "front_ceiling",
                        help="the trivial repository and server logs (default build/front_ceiling)")
    return parser


def check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    allowed = len(os.sched_getaffinity(0))
    args.protocols = [item for item in args.protocols.split(",") if item]
    if not args.protocols or not set(args.protocols) <= {"http", "grpc"}:
        parser.error(f"--protocols takes http,grpc, got {','.join(args.protocols) or 'nothing'}")
    if not 1 <= args.cores <= allowed:
        parser.error(f"--cores {args.cores}: give 1 to {allowed} (the CPUs this process may use)")
    args.rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    args.seconds = args.seconds if args.seconds is not None else (0.5 if args.quick else 5.0)
    if args.rounds < 1 or args.seconds <= 0 or args.concurrency < 1 or args.instances < 1 or args.load_processes < 0:
        parser.error("--rounds, --seconds, --concurrency and --instances must be positive, --load-processes >= 0")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check(args, parser)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    server_cpus, load_cpus = split_cpus(args.cores, sorted(os.sched_getaffinity(0)))
    texts = short_texts(16 if args.quick else 200)
    repository = write_repository(args.work_dir.resolve() / "repository", args.instances)
    servers: dict[int, LocalServer] = {}
    pools: dict[tuple[int, str, bool], Pool] = {}
    tallies: dict[tuple[int, str, bool], Tally] = {}
    totals: dict[tuple[int, str, bool], int] = {}
    try:
        for workers in args.workers:
            build_dir = args.work_dir.resolve() / f"workers-{workers}"
            build_dir.mkdir(parents=True, exist_ok=True)
            servers[workers] = LocalServer(repository=repository, build_dir=build_dir, log=build_dir / "server.log",
                                           env={args.workers_env: str(workers)}, cpus=server_cpus).launch()
        for server in servers.values():
            server.wait_ready()
        processes = args.load_processes or max(2, len(load_cpus))
        for workers, server in servers.items():
            for protocol in args.protocols:
                for direct in (False, True) if not args.no_direct else (False,):
                    internal = server.internal_urls() if direct else None
                    url = (internal[0 if protocol == "http" else 1] if internal else
                           server.http_url if protocol == "http" else server.grpc_url)
                    key = (workers, protocol, direct)
                    pools[key] = Pool.load(protocol, url, MODEL_NAME, texts, args.concurrency, processes, load_cpus)
                    probe = pools[key].run(max(8, args.concurrency), warmup=1)
                    totals[key] = max(args.concurrency, int(probe.texts_per_second * args.seconds))
        for round_index in range(args.rounds):
            order = list(pools) if round_index % 2 == 0 else list(reversed(pools))
            for key in order:
                server = servers[key[0]]
                tally = tallies.setdefault(key, Tally())
                before, began = session_cpu(server.process.pid), time.perf_counter()
                tally.measurement.extend(pools[key].run(totals[key]))
                after = session_cpu(server.process.pid)
                tally.cpu_wall += time.perf_counter() - began
                tally.cpu.update({role: after[role] - before[role] for role in after})
                tally.gateway_processes = sum(1 for role, _ in session_processes(server.process.pid)
                                              if role == "gateway")
            LOGGER.info("round %d/%d done", round_index + 1, args.rounds)
    except (ServerError, PoolError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        for pool in pools.values():
            pool.close()
        stop_all(list(servers.values()))
    print_table(args, tallies, describe_cpus(server_cpus, load_cpus), server_cpus)
    return 0


COLUMNS = ("workers", "gateway procs", "protocol", "path", "requests/s", "p50 ms", "p99 ms", "gateway CPU", "gateway ms/req",
           "triton+stub ms/req", "load CPU", "load on")


def print_table(args: argparse.Namespace, tallies: dict[tuple[int, str, bool], Tally], load_on: str,
                server_cpus: Sequence[int]) -> None:
    print(f"\nThe front's ceiling: the gateway in front of a trivial upstream (ensemble -> one Python model that "
          f"answers a fixed label), {args.concurrency} in flight, one text per request, {args.rounds} interleaved "
          f"round(s) of about {args.seconds:g} s; server on CPUs {list(server_cpus)} (taskset), workers set by "
          f"{args.workers_env}. gateway CPU: cores used by all the gateway's processes; ms/req: CPU per request; "
          "direct: straight to tritonserver's internal port (no front), the upstream's own ceiling. gateway procs: "
          "the gateway's processes found in the server's process tree (main process + workers).")
    lines = []
    for (workers, protocol, direct), tally in sorted(tallies.items()):
        m = tally.measurement
        requests = max(len(m.latencies), 1)
        upstream = sum(value for role, value in tally.cpu.items() if role not in ("gateway", "other"))
        lines.append((str(workers), str(tally.gateway_processes), protocol, "direct" if direct else "gateway", f"{m.texts_per_second:.0f}",
                      f"{m.percentile_ms(50):.2f}", f"{m.percentile_ms(99):.2f}",
                      f"{tally.cpu['gateway'] / tally.cpu_wall:.2f}" if tally.cpu_wall else "-",
                      f"{1000.0 * tally.cpu['gateway'] / requests:.3f}", f"{1000.0 * upstream / requests:.3f}",
                      f"{m.client_cpu:.2f}", load_on))
    widths = [max(len(column), *(len(line[i]) for line in lines)) for i, column in enumerate(COLUMNS)]
    print("  ".join(column.rjust(width) for column, width in zip(COLUMNS, widths)))
    print("  ".join("-" * width for width in widths))
    for line in lines:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths)))


if __name__ == "__main__":
    sys.exit(main())
