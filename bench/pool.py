"""Engines in their own processes, each confined to given CPUs: raw ONNX Runtime sessions (one process per
session) and the closed-loop load generator, so that neither the Python interpreter's lock nor the benchmark's own
process limits what a row measures, and so that their CPUs can be kept apart from the server's.

A `Pool` is a group of spawned processes that run the same kind of job side by side: `Pool.raw(...)` for N
single-thread ONNX Runtime sessions (the best throughput of raw ONNX Runtime on N cores) or one session with N
threads (its best latency), `Pool.load(...)` for the load generator split over P processes. `Pool.run(total)` starts
every process at the same instant on its share of `total` texts and returns one Measurement: all latencies, the
longest wall time, and the CPU time of the pool's processes (read by each process of itself, threads included).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Sequence

from bench.loadgen import Measurement, closed_loop, make_workers, sequential

LOGGER = logging.getLogger(__name__)
START_TIMEOUT_S = 120
ROUND_TIMEOUT_S = 900


@dataclass(frozen=True)
class Job:
    """What one pool process runs: "raw" (onnx_dir, threads) or "load" (protocol, url, model, workers)."""

    kind: str
    texts: tuple[Any, ...]
    onnx_dir: str = ""
    threads: int = 1
    protocol: str = ""
    url: str = ""
    model: str = ""
    workers: int = 1


def _engine(job: Job) -> tuple[Any, Any]:
    """(run(total, warmup) -> Measurement, close())."""
    if job.kind == "raw":
        from bench.engines import RawOrt

        raw = RawOrt(Path(job.onnx_dir), job.texts, threads=job.threads)
        return (lambda total, warmup: sequential(raw, len(job.texts), total, warmup)), (lambda: None)
    if job.kind == "load":
        workers = make_workers(job.protocol, job.url, job.model, job.texts, job.workers)
        return (lambda total, warmup: closed_loop(workers, len(job.texts), total, warmup)), \
            (lambda: [worker.close() for worker in workers])
    raise ValueError(f"unknown job kind {job.kind!r}")


def _serve(connection: Connection, cpus: Sequence[int], job: Job) -> None:
    """A pool process: confine itself to `cpus`, build the engine, then run rounds until told to stop (None)."""
    os.sched_setaffinity(0, cpus)
    try:
        run, close = _engine(job)
    except BaseException as error:  # reported to the parent, which raises it
        connection.send(("error", repr(error)))
        return
    connection.send(("ready", os.getpid()))
    try:
        while True:
            order = connection.recv()
            if order is None:
                return
            total, warmup, start_at = order
            time.sleep(max(0.0, start_at - time.time()))
            try:
                connection.send(("done", run(total, warmup)))
            except BaseException as error:
                connection.send(("error", repr(error)))
    finally:
        close()


class PoolError(RuntimeError):
    """A pool process failed; the message carries its error."""


class Pool:
    """`len(jobs)` processes, process i confined to cpus; see the module's docstring."""

    def __init__(self, jobs: Sequence[Job], cpus: Sequence[int], name: str) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process that holds threads or sessions
        self.name = name
        self.cpus = sorted(cpus)
        self.jobs = list(jobs)
        self.connections: list[Connection] = []
        self.processes: list[Any] = []
        for job in self.jobs:
            mine, theirs = context.Pipe()
            process = context.Process(target=_serve, args=(theirs, self.cpus, job), daemon=True)
            process.start()
            self.connections.append(mine)
            self.processes.append(process)
        for connection in self.connections:
            self._answer(connection, START_TIMEOUT_S)

    @classmethod
    def raw(cls, onnx_dir: Path, texts: Sequence[Any], processes: int, threads: int, cpus: Sequence[int]) -> "Pool":
        job = Job("raw", tuple(texts), onnx_dir=str(onnx_dir), threads=threads)
        return cls([job] * processes, cpus, f"raw ORT {processes}x{threads}")

    @classmethod
    def load(cls, protocol: str, url: str, model: str, texts: Sequence[Any], concurrency: int, processes: int,
             cpus: Sequence[int]) -> "Pool":
        """`concurrency` closed-loop workers (requests in flight) spread over `processes` processes."""
        processes = max(1, min(processes, concurrency))
        shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
        return cls([Job("load", tuple(texts), protocol=protocol, url=url, model=model, workers=share)
                    for share in shares], cpus, f"load {protocol} x{concurrency} in {processes} process(es)")

    def _answer(self, connection: Connection, timeout: float) -> Any:
        if not connection.poll(timeout):
            raise PoolError(f"{self.name}: a process did not answer within {timeout:.0f} s")
        try:
            kind, value = connection.recv()
        except EOFError as error:
            raise PoolError(f"{self.name}: a process exited") from error
        if kind == "error":
            raise PoolError(f"{self.name}: {value}")
        return value

    def run(self, total: int, warmup: int = 0) -> Measurement:
        """All processes start together on their share of `total` texts (each at least one per worker), after
        `warmup` untimed texts per worker (0: the engines are warm from an earlier run)."""
        weights = [job.workers if job.kind == "load" else 1 for job in self.jobs]
        shares = [max(weight, round(total * weight / sum(weights))) for weight in weights]
        start_at = time.time() + 0.05
        for connection, share in zip(self.connections, shares):
            connection.send((share, warmup, start_at))
        result = Measurement()
        walls = []
        for connection in self.connections:
            part: Measurement = self._answer(connection, ROUND_TIMEOUT_S)
            result.latencies.extend(part.latencies)
            result.labels.extend(part.labels)
            result.client_cpu_seconds += part.client_cpu_seconds
            walls.append(part.wall)
        result.wall = max(walls)
        return result

    def close(self) -> None:
        for connection in self.connections:
            try:
                connection.send(None)
            except OSError:
                pass
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
