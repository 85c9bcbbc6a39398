"""The front's own ceiling: requests/s and CPU per request of the gateway (its main process and workers, from
/proc) in front of a trivial upstream that answers every request at once, for several worker counts side by side.

    .venv/bin/python tests/front_ceiling.py --workers 1 2 --rounds 3 --seconds 5 --connections 32

The upstream stands in for tritonserver (the gateway starts it with tritonserver's arguments: `upstream`, below):
one ensemble `echo` with one string input and a `label` output, answered with a constant; it runs in as many
processes as the gateway has workers (SO_REUSEPORT), so that it is not the limit. The load comes from one process
of raw keep-alive connections (pre-built requests, answers read by Content-Length), rounds interleaved by worker
count. Every figure shares the machine's cores with the load and the upstream: compare side by side."""
from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METADATA = {"name": "echo", "versions": ["1"], "platform": "ensemble",
            "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [-1, 1]}],
            "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1, 1]}]}
CONFIG = {"name": "echo", "platform": "ensemble", "max_batch_size": 8}
ANSWER = {"model_name": "echo", "model_version": "1",
          "outputs": [{"name": "label", "datatype": "BYTES", "shape": [1, 1], "data": ["ok"]}]}
BODY = json.dumps({"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1, 1],
                               "data": ["where is my order"]}]}).encode()


# ------------------------------------------------------------------------------------------------ the upstream

def _port(args: list[str], name: str) -> int:
    return int(next(a.split("=", 1)[1] for a in args if a.startswith(f"--{name}-port=")))


async def _serve_upstream(http_port: int, grpc_port: int, metrics_port: int) -> None:
    import grpc
    from aiohttp import web
    from tritonclient.grpc import service_pb2

    answer = json.dumps(ANSWER).encode()
    grpc_answer = service_pb2.ModelInferResponse(model_name="echo", model_version="1").SerializeToString()

    async def route(request: web.Request) -> web.Response:
        await request.read()
        path = request.path
        if path in ("/v2/health/live", "/v2/health/ready", "/v2/models/echo/ready"):
            return web.Response()
        if path == "/v2/repository/index":
            return web.json_response([{"name": "echo", "version": "1", "state": "READY"}])
        if path == "/v2/models/echo":
            return web.json_response(METADATA)
        if path == "/v2/models/echo/config":
            return web.json_response(CONFIG)
        if path == "/v2/models/echo/infer":
            return web.Response(body=answer, content_type="application/json")
        if path == "/metrics":
            return web.Response(text="# nothing\n")
        return web.json_response({"error": "not found"}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", route)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for port in (http_port, metrics_port):
        await web.TCPSite(runner, "127.0.0.1", port, reuse_port=True).start()

    async def infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return grpc_answer

    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}),))
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0)
    await runner.cleanup()


def upstream(args: list[str]) -> None:
    """Started by the gateway in place of tritonserver: `processes` copies on its internal ports."""
    ports = (_port(args, "http"), _port(args, "grpc"), _port(args, "metrics"))
    copies = int(os.environ.get("FRONT_CEILING_UPSTREAMS", "1"))
    children = [subprocess.Popen([sys.executable, __file__, "upstream-copy", *map(str, ports)])
                for _ in range(copies - 1)]
    try:
        asyncio.run(_serve_upstream(*ports))
    finally:
        for child in children:
            child.terminate()


# ------------------------------------------------------------------------------------------------ the load

def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def gateway_pids(main: int) -> list[int]:
    """The gateway and its workers (not the upstream)."""
    pids = [main]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat[1]) == main and b"gateway.worker" in cmdline:
                pids.append(int(entry.name))
    return pids


async def _connection(port: int, request: bytes, stop_at: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while time.monotonic() < stop_at:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        await reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode(errors="replace"))
        counts[0] += 1
    writer.close()


async def load(port: int, connections: int, seconds: float, model: str = "echo", body: bytes = BODY) -> int:
    """Requests answered with 200 in `seconds`, from `connections` keep-alive connections, each sending its next
    request when the last answer arrived."""
    request = (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    counts = [0]
    stop_at = time.monotonic() + seconds
    await asyncio.gather(*(_connection(port, request, stop_at, counts) for _ in range(connections)))
    return counts[0]


def upstream_executable(directory: Path) -> Path:
    """The gateway runs tritonserver's path with Triton's options first: a script that starts `upstream`."""
    script = directory / "tritonserver-stand-in"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" upstream "$@"\n')
    script.chmod(0o755)
    return script


def start_gateway(workers: int, log: Path, checkout: Path = ROOT) -> tuple[subprocess.Popen, int]:
    """The gateway of `checkout` with `workers` workers (0: a checkout from before workers existed, run as is)."""
    http, grpc_port, metrics = free_ports(3)
    env = {**os.environ, "PYTHONPATH": str(checkout), "FRONT_CEILING_UPSTREAMS": str(max(1, workers))}
    command = [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--http-port", str(http), "--grpc-port",
               str(grpc_port), "--metrics-port", str(metrics), *(["--workers", str(workers)] if workers else []),
               "--", str(upstream_executable(log.parent))]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=checkout,
                                   start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", http), timeout=1) as s:
                s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
                if s.recv(100).startswith(b"HTTP/1.1 200"):
                    return process, http
        except OSError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"the gateway exited:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    raise SystemExit(f"the gateway was not ready in 60 s:\n{log.read_text()[-3000:]}")


def start_served(workers: int, log: Path, repository: Path, checkout: Path = ROOT) -> tuple[subprocess.Popen, int]:
    """serve_local.sh of `checkout` on an assembled repository: the real tritonserver behind the gateway."""
    sys.path.insert(0, str(ROOT))
    from bench.local_server import LocalServer
    server = LocalServer(repository=repository, log=log, checkout=checkout, build_dir=repository.parent.parent.parent,
                         env={"TRITONED_WORKERS": str(workers)} if workers else {}).start()
    assert server.process is not None
    return server.process, server.http_port


def measure(args: argparse.Namespace) -> None:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    model, body = "echo", BODY
    if args.model_repository:
        model = "ensemble_model"
        start = functools.partial(start_served, repository=args.model_repository.resolve())
    else:
        start = start_gateway
    servers = {f"{w} worker(s)": start(w, logs / f"gateway-{w}.log") for w in args.workers}
    if args.baseline:
        servers[f"baseline {args.baseline.name}"] = start(0, logs / "gateway-baseline.log", checkout=args.baseline)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
    try:
        for round_ in range(args.rounds):
            for name, (process, port) in servers.items():
                pids = gateway_pids(process.pid)
                asyncio.run(load(port, args.connections, 1.0, model, body))  # warm up
                before, started = cpu_seconds(pids), time.monotonic()
                done = asyncio.run(load(port, args.connections, args.seconds, model, body))
                wall, cpu = time.monotonic() - started, cpu_seconds(pids) - before
                results[name].append((done / wall, cpu / done * 1000))
                print(f"round {round_ + 1}, {name}: {done / wall:,.0f} requests/s, gateway CPU "
                      f"{cpu / done * 1000:.3f} ms/request", flush=True)
    finally:
        for process, _ in servers.values():
            os.killpg(process.pid, signal.SIGINT)
        for process, _ in servers.values():
            process.wait(30)
    print(f"\n{os.cpu_count()} CPUs here; load, upstream and gateway share them. Median of {args.rounds} rounds:")
    for name, rows in results.items():
        rates, costs = sorted(r for r, _ in rows), sorted(c for _, c in rows)
        print(f"  {name}: {rates[len(rates) // 2]:,.0f} requests/s, gateway CPU "
              f"{costs[len(costs) // 2]:.3f} ms/request")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "upstream":
        upstream(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "upstream-copy":
        asyncio.run(_serve_upstream(*map(int, sys.argv[2:5])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one round")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections of the load")
    parser.add_argument("--baseline", type=Path, help="also a checkout from before the workers (its gateway as is)")
    parser.add_argument("--model-repository", type=Path,
                        help="serve this assembled repository (build/NAME/context/model_repository, model "
                             "ensemble_model) with the real tritonserver instead of the stand-in upstream")
    parser.add_argument("--logs", default="build/front_ceiling", help="directory of the gateways' logs")
    measure(parser.parse_args())


if __name__ == "__main__":
    main()
