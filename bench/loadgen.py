"""A small closed-loop load generator for the served ensemble: N workers, one text per request, each worker
sends its next request as soon as the previous answer arrived.

HTTP: one keep-alive `http.client` connection per worker thread. Request bodies are made once, before the
clock starts, by tritonclient's own `generate_request_body` (Triton's binary tensor extension), and every
answer is parsed by tritonclient's `parse_response_body` and checked for a label, so the wire format is the
real client's while the per-request client CPU stays small (no gevent, no re-encoding).
gRPC: one `tritonclient.grpc.InferenceServerClient` per worker thread (gRPC releases the GIL while waiting).

The generator shares the machine's cores with the server: `Measurement.client_cpu` is the CPU time this process
used per wall second during the round, reported next to every served figure.
"""
from __future__ import annotations

import http.client
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

INPUT_NAME = "text_input"
PAIR_INPUT_NAME = "text_pair"
OUTPUT_NAMES = ("label", "score", "probabilities")


@dataclass
class Measurement:
    """Per-text latencies (seconds) of one round, its wall time and the client's CPU time."""

    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    client_cpu_seconds: float = 0.0
    server_cpu_seconds: float = 0.0  # from the `server_cpu` probe of closed_loop, over the timed part only
    labels: list[tuple[int, str]] = field(default_factory=list)  # (text index, top label)

    def extend(self, other: "Measurement") -> None:
        self.latencies.extend(other.latencies)
        self.wall += other.wall
        self.client_cpu_seconds += other.client_cpu_seconds
        self.server_cpu_seconds += other.server_cpu_seconds
        self.labels.extend(other.labels)

    @property
    def texts_per_second(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000.0) if self.latencies else 0.0

    @property
    def client_cpu(self) -> float:
        return self.client_cpu_seconds / self.wall if self.wall else 0.0


class HttpWorker:
    """One keep-alive connection; `infer(i)` sends the prepared body of text i and returns its label."""

    def __init__(self, url: str, model: str, bodies: Sequence[tuple[bytes, int]]) -> None:
        import tritonclient.http as httpclient

        host, port = url.rsplit(":", 1)
        self.connection = http.client.HTTPConnection(host, int(port), timeout=120)
        self.path = f"/v2/models/{model}/infer"
        self.bodies = bodies
        self.parse = httpclient.InferenceServerClient.parse_response_body

    def infer(self, index: int) -> str:
        body, json_size = self.bodies[index]
        self.connection.request("POST", self.path, body=body, headers={
            "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(json_size)})
        response = self.connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:300]!r}")
        header_length = response.getheader("Inference-Header-Content-Length")
        result = self.parse(data, header_length=int(header_length) if header_length else None)
        return result.as_numpy("label").reshape(-1)[0].decode()

    def close(self) -> None:
        self.connection.close()


def request_inputs(module: Any, text: Any, **options: Any) -> list[Any]:
    """tritonclient `module`'s inputs of one text ([1, 1] text_input) or (text, text_pair) pair (+ text_pair)."""
    inputs = []
    for name, value in zip((INPUT_NAME, PAIR_INPUT_NAME), (text,) if isinstance(text, str) else text):
        tensor = module.InferInput(name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[value.encode("utf-8")]], dtype=np.object_), **options)
        inputs.append(tensor)
    return inputs


def http_bodies(texts: Sequence[Any]) -> list[tuple[bytes, int]]:
    """The request body of each text (or pair), as tritonclient.http would send it (binary data, all three
    outputs)."""
    import tritonclient.http as httpclient

    outputs = [httpclient.InferRequestedOutput(name, binary_data=True) for name in OUTPUT_NAMES]
    bodies = []
    for text in texts:
        inputs = request_inputs(httpclient, text, binary_data=True)
        body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs, outputs)
        bodies.append((body, json_size if json_size is not None else len(body)))
    return bodies


class GrpcWorker:
    """One tritonclient gRPC client; `infer(i)` sends text i and returns its label."""

    def __init__(self, url: str, model: str, texts: Sequence[Any]) -> None:
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(url)
        self.model = model
        self.inputs = [request_inputs(grpcclient, text) for text in texts]
        self.outputs = [grpcclient.InferRequestedOutput(name) for name in OUTPUT_NAMES]

    def infer(self, index: int) -> str:
        result = self.client.infer(self.model, self.inputs[index], outputs=self.outputs)
        return result.as_numpy("label").reshape(-1)[0].decode()

    def close(self) -> None:
        self.client.close()


def make_workers(protocol: str, url: str, model: str, texts: Sequence[Any], count: int,
                 bodies: Sequence[tuple[bytes, int]] | None = None) -> list[Any]:
    if protocol == "http":
        prepared = bodies if bodies is not None else http_bodies(texts)
        return [HttpWorker(url, model, prepared) for _ in range(count)]
    if protocol == "grpc":
        return [GrpcWorker(url, model, texts) for _ in range(count)]
    raise ValueError(f"unknown protocol {protocol!r}")


def closed_loop(workers: Sequence[Any], texts_count: int, total: int, warmup: int = 2,
                server_cpu: Callable[[], float] | None = None) -> Measurement:
    """The workers share one queue of `total` requests (text i % texts_count for i in 0..total-1), so a round
    sends exactly the texts the in-process baseline runs. Each worker first sends `warmup` untimed requests.
    `server_cpu()` (CPU seconds used so far by the server) is read when the clock starts and stops."""
    for offset, worker in enumerate(workers):
        for i in range(warmup):
            worker.infer((offset + i) % texts_count)
    results: list[Measurement] = [Measurement() for _ in workers]
    errors: list[BaseException] = []
    tickets = itertools.count()  # next() on a count is atomic under the GIL
    start_barrier = threading.Barrier(len(workers) + 1)

    def loop(position: int, worker: Any) -> None:
        mine = results[position]
        start_barrier.wait()
        try:
            while not errors:
                index = next(tickets)
                if index >= total:
                    return
                began = time.perf_counter()
                label = worker.infer(index % texts_count)
                mine.latencies.append(time.perf_counter() - began)
                mine.labels.append((index % texts_count, label))
        except BaseException as err:  # reported after the round
            errors.append(err)

    threads = [threading.Thread(target=loop, args=(i, w), daemon=True) for i, w in enumerate(workers)]
    for thread in threads:
        thread.start()
    server_before = server_cpu() if server_cpu else 0.0
    cpu_before = time.process_time()
    began = time.perf_counter()
    start_barrier.wait()
    for thread in threads:
        thread.join()
    result = Measurement(wall=time.perf_counter() - began, client_cpu_seconds=time.process_time() - cpu_before,
                         server_cpu_seconds=(server_cpu() - server_before) if server_cpu else 0.0)
    if errors:
        raise RuntimeError(f"load generator: {len(errors)} worker(s) failed, first: {errors[0]!r}")
    for mine in results:
        result.latencies.extend(mine.latencies)
        result.labels.extend(mine.labels)
    return result


def sequential(run_one: Callable[[int], Any], texts_count: int, total: int, warmup: int = 2) -> Measurement:
    """In-process baseline: texts 0..total-1 (modulo texts_count), one at a time."""
    for i in range(warmup):
        run_one(i % texts_count)
    result = Measurement()
    cpu_before = time.process_time()
    began = time.perf_counter()
    for index in range(total):
        start = time.perf_counter()
        result.labels.append((index % texts_count, run_one(index % texts_count)))
        result.latencies.append(time.perf_counter() - start)
    result.wall = time.perf_counter() - began
    result.client_cpu_seconds = time.process_time() - cpu_before
    return result
