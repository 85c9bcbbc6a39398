"""The sizing benchmark (bench.py --sizes / --cores): model sizes x server cores x requests in flight.

For each model size (bench/shapes.py: tiny, mini, base, random weights, converted with utils/convert_to_onnx.py)
and each core count N, the server (serve_local.sh: gateway, tritonserver, every backend stub) runs confined to the
first N of this process's CPUs (taskset -c, inherited by its whole process tree); the load generator runs in
separate processes (bench/pool.py) on the remaining CPUs, or on the same ones when none remain (the table says
which). Against it, on the same N CPUs and the same texts (tokenization included, one text at a time per
session): raw ONNX Runtime's best throughput configuration (N single-thread processes side by side) and its best
latency configuration (one session with N threads). All engines of a size run in interleaved rounds, so machine
noise hits them alike.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from bench.loadgen import Measurement
from bench.local_server import LocalServer, ServerError, assemble, stop_all
from bench.pool import Pool

LOGGER = logging.getLogger("bench.matrix")
RAW_TPUT, RAW_LAT = "raw Nx1", "raw 1xN"  # N processes x 1 thread; 1 process x N threads
GOAL_P50_EXTRA_MS, GOAL_TPUT = 1.5, 0.95  # served p50 at 1 in flight <= raw 1xN + 1.5 ms; >= 0.95x raw Nx1 at 16+
MODEL_NAME = "bench_model"


@dataclass
class MatrixRow:
    size: str
    cores: int
    config: str
    engine: str  # RAW_TPUT, RAW_LAT, "http", "grpc"
    concurrency: int
    load_cpus: str  # where the load generator ran: "cpus 1" or "shared"
    confined: str = ""  # served rows: confinement()'s proof
    measurement: Measurement = field(default_factory=Measurement)
    server_cpu_seconds: float = 0.0
    server_wall: float = 0.0  # the windows in which server_cpu_seconds was read
    label_mismatches: int = 0


def split_cpus(cores: int, allowed: Sequence[int]) -> tuple[list[int], list[int]]:
    """(server CPUs, load generator CPUs): the first `cores` CPUs for the server, the rest for the load generator,
    or all of them (shared) when none remain."""
    allowed = sorted(allowed)
    if cores < 1 or cores > len(allowed):
        raise ValueError(f"--cores {cores}: this process may use {len(allowed)} CPU(s) ({allowed})")
    server = allowed[:cores]
    return server, (allowed[cores:] or allowed)


def describe_cpus(server: Sequence[int], load: Sequence[int]) -> str:
    return "shared" if set(load) & set(server) else "cpus " + ",".join(str(c) for c in load)


def session_cpu_seconds(server: LocalServer) -> float:
    """CPU time of every process in the server's session (serve_local.sh's process tree)."""
    from bench.process_cost import session_cpu
    return sum(session_cpu(server.process.pid).values()) if server.process else 0.0


def confinement(server: LocalServer, cpus: Sequence[int]) -> str:
    """Proof that the server's whole process tree runs on `cpus` only (one line); ServerError when a process may
    run elsewhere."""
    affinities = server.affinities()
    outside = {pid: sorted(allowed) for pid, allowed in affinities.items() if not allowed <= set(cpus)}
    if outside or not affinities:
        raise ServerError(f"the server is not confined to CPUs {list(cpus)}: processes {outside or 'none found'}")
    return f"{len(affinities)} server processes, all on CPUs {sorted(cpus)}"


def sizing_said(server: LocalServer) -> str:
    """What the server's start log says it found and chose for its CPUs (the gateway's tritoned.sizing lines), if
    anything: the sizes a row was served with."""
    lines = [line.split("tritoned.sizing:", 1)[-1].strip() for line in server.log_tail(10**6).splitlines()
             if "tritoned.sizing" in line]
    return "; ".join(lines)


def total_for(pool: Pool, concurrency: int, seconds: float) -> int:
    """Texts per round for about `seconds` (a short untimed probe run first, which also warms the engine up)."""
    probe = pool.run(max(8, concurrency), warmup=1)
    return max(concurrency, int(probe.texts_per_second * seconds))


def measure_size(size: str, onnx_dir: Path, settings: Any, configs: dict[str, list[str]], cores_list: list[int],
                 load_processes: int, work_dir: Path, python: str, texts: list[Any]) -> list[MatrixRow]:
    """Every row of one model size, interleaved round by round."""
    allowed = sorted(os.sched_getaffinity(0))
    rows: dict[tuple, MatrixRow] = {}
    servers: dict[tuple[int, str], LocalServer] = {}
    pools: dict[tuple, Pool] = {}
    totals: dict[tuple, int] = {}
    reference: list[str] = []
    confined: dict[tuple[int, str], str] = {}
    try:
        for cores in cores_list:
            server_cpus, _ = split_cpus(cores, allowed)
            for config, options in configs.items():
                build_dir = work_dir / "repos" / f"{size}-{cores}c-{config}"
                repository = assemble(onnx_dir, build_dir, MODEL_NAME, options, python)
                servers[(cores, config)] = LocalServer(repository=repository, build_dir=build_dir,
                                                       log=build_dir / "server.log", python=python,
                                                       cpus=server_cpus).launch()
        for cores in cores_list:
            server_cpus, load_cpus = split_cpus(cores, allowed)
            pools[(cores, RAW_TPUT)] = Pool.raw(onnx_dir, texts, processes=cores, threads=1, cpus=server_cpus)
            pools[(cores, RAW_LAT)] = Pool.raw(onnx_dir, texts, processes=1, threads=cores, cpus=server_cpus)
        for (cores, config), server in servers.items():
            server.wait_ready()
            confined[(cores, config)] = confinement(server, split_cpus(cores, allowed)[0])
            said = sizing_said(server)
            if said:
                confined[(cores, config)] += f"; sized: {said}"
        from bench.engines import RawOrt
        raw = RawOrt(onnx_dir, texts, threads=1)
        reference = [raw(i) for i in range(len(texts))]
        del raw
        for round_index in range(settings.rounds):
            LOGGER.info("%s round %d/%d", size, round_index + 1, settings.rounds)
            for cores in cores_list:
                server_cpus, load_cpus = split_cpus(cores, allowed)
                where = describe_cpus(server_cpus, load_cpus)
                for engine in (RAW_TPUT, RAW_LAT):
                    pool = pools[(cores, engine)]
                    key = (cores, engine)
                    if key not in totals:
                        totals[key] = total_for(pool, 1, settings.seconds)
                    row = rows.setdefault((cores, "-", engine, 1), MatrixRow(size, cores, "-", engine, 1, "-"))
                    row.measurement.extend(pool.run(totals[key]))
                for (server_cores, config), server in servers.items():
                    if server_cores != cores:
                        continue
                    for protocol in settings.protocols:
                        for concurrency in settings.concurrency:
                            key = (cores, config, protocol, concurrency)
                            if key not in pools:
                                processes = load_processes or len(load_cpus)
                                url = server.http_url if protocol == "http" else server.grpc_url
                                pools[key] = Pool.load(protocol, url, MODEL_NAME, texts, concurrency, processes,
                                                       load_cpus)
                                totals[key] = total_for(pools[key], concurrency, settings.seconds)
                            row = rows.setdefault(key, MatrixRow(size, cores, config, protocol, concurrency, where,
                                                                 confined=confined[(cores, config)]))
                            before, began = session_cpu_seconds(server), time.perf_counter()
                            measurement = pools[key].run(totals[key])
                            row.server_cpu_seconds += session_cpu_seconds(server) - before
                            row.server_wall += time.perf_counter() - began
                            row.label_mismatches += sum(1 for index, label in measurement.labels
                                                        if label != reference[index])
                            row.measurement.extend(measurement)
    finally:
        for pool in pools.values():
            pool.close()
        stop_all(list(servers.values()))
    return list(rows.values())


COLUMNS = ("size", "cores", "config", "engine", "conc", "texts/s", "x raw Nx1", "p50 ms", "vs raw 1xN", "p99 ms",
           "server CPU", "load CPU", "load on")


def records_of(rows: Sequence[MatrixRow]) -> list[dict[str, Any]]:
    """One record per row, with ratios to the raw rows of the same size and core count."""
    raw = {(r.size, r.cores, r.engine): r.measurement for r in rows if r.engine in (RAW_TPUT, RAW_LAT)}
    records = []
    order = {RAW_TPUT: 0, RAW_LAT: 1, "http": 2, "grpc": 3}
    for row in sorted(rows, key=lambda r: (r.size, r.cores, order[r.engine], r.config, r.concurrency)):
        m = row.measurement
        tput, lat = raw[(row.size, row.cores, RAW_TPUT)], raw[(row.size, row.cores, RAW_LAT)]
        served = row.engine not in (RAW_TPUT, RAW_LAT)
        records.append({
            "size": row.size, "cores": row.cores, "config": row.config, "engine": row.engine,
            "concurrency": row.concurrency, "texts": len(m.latencies), "texts_per_s": m.texts_per_second,
            "tput_ratio": m.texts_per_second / tput.texts_per_second if tput.texts_per_second else 0.0,
            "p50_ms": m.percentile_ms(50), "p50_vs_raw_lat_ms": m.percentile_ms(50) - lat.percentile_ms(50),
            "p99_ms": m.percentile_ms(99),
            "server_cpu": row.server_cpu_seconds / row.server_wall if served and row.server_wall else 0.0,
            "server_cpu_ms_per_text": 1000.0 * row.server_cpu_seconds / max(len(m.latencies), 1),
            "load_cpu": m.client_cpu, "load_on": row.load_cpus, "label_mismatches": row.label_mismatches,
            "confined": row.confined})
    return records


def table(records: Sequence[dict[str, Any]]) -> str:
    lines = []
    for r in records:
        served = r["engine"] not in (RAW_TPUT, RAW_LAT)
        lines.append((r["size"], str(r["cores"]), r["config"], r["engine"], str(r["concurrency"]),
                      f"{r['texts_per_s']:.1f}", f"{r['tput_ratio']:.2f}", f"{r['p50_ms']:.2f}",
                      f"{r['p50_vs_raw_lat_ms']:+.2f}", f"{r['p99_ms']:.2f}",
                      f"{r['server_cpu']:.2f}" if served else "-", f"{r['load_cpu']:.2f}", r["load_on"]))
    widths = [max(len(column), *(len(line[i]) for line in lines)) for i, column in enumerate(COLUMNS)]
    text = ["  ".join(column.rjust(width) for column, width in zip(COLUMNS, widths)),
            "  ".join("-" * width for width in widths)]
    text.extend("  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in lines)
    return "\n".join(text)


BUSY_SHARE = 0.8  # raw Nx1 that got less than this share of its N cores: the machine was busy


def busy_because(records: Sequence[dict[str, Any]]) -> str | None:
    """Why the goals cannot be judged on this machine now, or None: raw Nx1 (N processes, each always running) uses
    N cores on a quiet machine; when it got much less, other load took the cores and every ratio is noise."""
    starved = [f"{r['size']} {r['cores']} core(s): {r['load_cpu']:.2f}" for r in records
               if r["engine"] == RAW_TPUT and r["load_cpu"] < BUSY_SHARE * r["cores"]]
    if not starved:
        return None
    return (f"the machine is busy: raw Nx1 got fewer than {BUSY_SHARE:.0%} of its N cores ({'; '.join(starved)}); "
            "run again on a quiet machine")


def goal_lines(records: Sequence[dict[str, Any]], judged: bool) -> list[str]:
    """The sizing goals per served row: p50 at 1 in flight <= raw 1xN + 1.5 ms; texts/s at 16 and 64 in flight
    >= 0.95x raw Nx1. MET/MISSED only when `judged` (a full run)."""
    def verdict(ok: bool) -> str:
        return ("MET   " if ok else "MISSED") if judged else "-     "

    lines = []
    for r in records:
        if r["engine"] not in ("http", "grpc"):
            continue
        where = f"{r['size']} {r['cores']} core(s) {r['engine']:4} c{r['concurrency']:<2} [{r['config']}]"
        if r["concurrency"] == 1:
            lines.append(f"{verdict(r['p50_vs_raw_lat_ms'] <= GOAL_P50_EXTRA_MS)} {where}: p50 {r['p50_ms']:.2f} ms "
                         f"= raw 1x{r['cores']} {r['p50_vs_raw_lat_ms']:+.2f} ms (goal <= +{GOAL_P50_EXTRA_MS} ms)")
        elif r["concurrency"] >= 16:
            lines.append(f"{verdict(r['tput_ratio'] >= GOAL_TPUT)} {where}: {r['texts_per_s']:.1f} texts/s = "
                         f"{r['tput_ratio']:.2f}x raw {r['cores']}x1 (goal >= {GOAL_TPUT}x)")
    return lines


def check(sizes: Sequence[str], cores_list: Sequence[int], sets: Sequence[str], load_processes: int) -> str | None:
    """What is wrong with the sizing mode's options (a message naming the fix), or None."""
    from bench.shapes import SIZES
    allowed = len(os.sched_getaffinity(0))
    unknown = [size for size in sizes if size not in SIZES]
    if unknown or not sizes:
        return f"--sizes: unknown size(s) {unknown or sizes}; choose from {','.join(SIZES)}"
    bad = [cores for cores in cores_list if cores < 1 or cores > allowed]
    if bad or not cores_list:
        return f"--cores: {bad or cores_list} not between 1 and the {allowed} CPU(s) this process may use"
    if "pairs" in sets:
        return "--sets pairs is not measured in the sizing mode (--sizes/--cores): use --sets short or long"
    if load_processes < 0:
        return "--load-processes: give 0 (one per CPU of the load generator) or a positive number"
    return None


def run(sizes: Sequence[str], cores_list: Sequence[int], settings: Any, configs: dict[str, list[str]],
        load_processes: int, work_dir: Path, python: str, judged_why_not: str | None,
        texts_of: Any) -> list[dict[str, Any]]:
    """Measure every size, print the table and the goals; the records (for results.json)."""
    from bench.shapes import DESCRIPTIONS, ensure_size
    records: list[dict[str, Any]] = []
    for text_set in settings.sets:
        texts = texts_of(text_set, settings)
        rows: list[MatrixRow] = []
        for size in sizes:
            _, onnx_dir = ensure_size(size, work_dir, python)
            rows.extend(measure_size(size, onnx_dir, settings, configs, sorted(set(cores_list)), load_processes,
                                     work_dir, python, texts))
        found = records_of(rows)
        for record in found:
            record["set"] = text_set
        records.extend(found)
        allowed = sorted(os.sched_getaffinity(0))
        print(f"\nSizing: {text_set} texts ({len(texts)}), one text per request, {settings.rounds} interleaved "
              f"round(s), about {settings.seconds:g} s per engine and round; this process may use CPUs {allowed}.")
        for size in sizes:
            print(f"  {size}: {DESCRIPTIONS[size]}, random weights")
        for name, options in configs.items():
            print(f"  config {name}: make_triton_image.sh {' '.join(options) or '(template defaults)'}")
        print(f"  server on the first N CPUs (taskset -c, its whole process tree); {RAW_TPUT}: N processes x 1 "
              f"thread, {RAW_LAT}: 1 process x N threads, both on the server's N CPUs (tokenization included).\n"
              "  x raw Nx1 = texts/s / raw Nx1's; vs raw 1xN = p50 - raw 1xN's p50. server CPU, load CPU: cores "
              "used (from /proc and the load processes' own clocks); load on: the load generator's CPUs, \"shared\" "
              "when it had to run on the server's (no CPU left over).")
        for line in sorted({f"{r['size']}, {r['cores']} core(s), config {r['config']}: {r['confined']}"
                            for r in found if r["confined"]}):
            print(f"  confined: {line}")
        print(table(found))
        mismatches = [f"{r['size']} {r['cores']}c {r['engine']} c{r['concurrency']}: {r['label_mismatches']}"
                      for r in found if r["label_mismatches"]]
        print("served labels that differ from raw ORT's: " + ("; ".join(mismatches) if mismatches else "none"))
        why_not = judged_why_not or busy_because(found)
        print("Goals (p50 at 1 in flight <= raw 1xN + 1.5 ms; texts/s at 16+ in flight >= 0.95x raw Nx1): "
              + ("judged" if why_not is None else f"not judged ({why_not})"))
        for line in goal_lines(found, why_not is None):
            print(f"  {line}")
    return records
