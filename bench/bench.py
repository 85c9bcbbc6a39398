#!/usr/bin/env python3
"""Benchmark the served classifier against raw ONNX Runtime (the limit) and the Hugging Face PyTorch pipeline.

One command: builds the demo model when it is missing (as quickstart.sh does), assembles the real ensemble with
make_triton_image.sh --no-build, serves it with serve_local.sh (the real Triton 2.51), and drives it over HTTP
and gRPC with one text per request at several concurrencies, on a short-text set (3-40 words, RU/EN support
messages), a long-text set (250-400 words, truncated at the model's maximum length as served) and, with
--sets ...,pairs, a set of pairs of short messages (text_input + text_pair, served by the same model assembled with
make_triton_image.sh --text-pair: the figures are about the serving path's cost on pairs). In the same run,
interleaved round by round so that machine noise hits all of them alike, it measures raw ONNX Runtime in
this process on the same model.onnx and the same texts (tokenization included, one text at a time) and the HF
pipeline on the PyTorch model. It prints one table (texts/s, p50 and p99 latency, each also as a ratio to raw
ONNX Runtime), the project's performance goals with their figures (judged MET or MISSED only by a full run: the
windows of a --quick run are too short to measure them), where the server's time goes (/v2/models/stats), and
with --quantized the int8 model's speed and its label agreement with fp32 on held-out texts.

The load generator runs in this process, on the same cores as the server: its CPU use is printed on every
served row ("bench CPU"), next to the server's own ("server CPU").

The sizing mode (--sizes, --cores; bench/matrix.py) serves model shapes (tiny, mini, base: random weights,
converted with the parity check) with the server's whole process tree confined to N cores (taskset), drives it with
a load generator in separate processes on the other cores (or on the same ones when none are left, marked
"shared"), and compares every row with raw ONNX Runtime's best throughput (N single-thread processes) and best
latency (one session, N threads) on the same N cores, interleaved (docs/benchmark.md).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/bench.py`
    sys.path.insert(0, str(ROOT))

from bench.engines import HfPipeline, RawOrt, labels_of, max_length_of  # noqa: E402
from bench.loadgen import Measurement, closed_loop, http_bodies, make_workers, sequential  # noqa: E402
from bench.local_server import LocalServer, ServerError, assemble, stats_delta, stop_all  # noqa: E402
from bench.texts import long_texts, short_pairs, short_texts  # noqa: E402
from bench import matrix  # noqa: E402
from bench.pool import PoolError  # noqa: E402
from bench.shapes import ShapeError  # noqa: E402

LOGGER = logging.getLogger("bench")
DEMO_HF = ROOT / "build" / "demo" / "hf"
DEMO_ONNX = ROOT / "build" / "demo" / "onnx"
DEMO_INTENTS = ROOT / "utils" / "demo_intents.json"
MODEL_NAME = "bench_model"
# The converter's int8 thresholds guard what gets deployed; the benchmark measures the int8 model whatever its
# agreement and prints the agreement against the 99% goal itself, so it opens them.
VARIANT_OPTIONS = {"fp32": [], "fused": ["--fuse"],
                   "int8": ["--fuse", "--quantize", "--int8-min-agreement", "0", "--int8-max-prob-diff", "1"]}
# The raw ONNX Runtime reference is measured twice: with ONNX Runtime's defaults (spinning worker threads) and with
# spinning off; whichever is faster in the run is "the limit" every ratio refers to.
RAW_ENGINES = {"raw ORT": True, "raw ORT no-spin": False}
# "direct": straight to tritonserver's internal port behind the gateway (--front-cost): what the front costs.
SERVED_ENGINES = ("http", "grpc", "http direct", "grpc direct")
# The project's performance goals (README, "Производительность"): served fp32 at 16 in flight >= 0.90x raw ONNX
# Runtime on short texts and >= 0.95x on long ones, >= 1.6x the HF pipeline, p50 at 1 in flight <= raw + 3 ms,
# int8 >= 1.3x the fp32 limit, int8 labels equal to fp32's on >= 99% of held-out texts.
GOAL_SHORT, GOAL_LONG, GOAL_P50_MS, GOAL_HF, GOAL_INT8, GOAL_AGREEMENT = 0.90, 0.95, 3.0, 1.6, 1.3, 0.99
GOAL_BY_SET = {"short": GOAL_SHORT, "long": GOAL_LONG, "pairs": GOAL_SHORT}  # served/raw at 16 in flight
SETS = ("short", "long", "pairs")  # "pairs": (text, text_pair) pairs of short texts, served with --text-pair
# The goals are judged only when every engine ran at least this long (rounds x seconds; a default full run: 2 x 3 s).
JUDGED_SECONDS = 6.0


class BenchError(Exception):
    """Something the user can fix; the message says what."""


# --------------------------------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class Settings:
    sets: list[str]
    concurrency: list[int]
    protocols: list[str]
    rounds: int
    seconds: float
    short_count: int
    long_count: int
    hf: bool
    raw_threads: int
    front_cost: bool = False


@dataclass
class Row:
    """One line of the table: all rounds of one engine on one text set."""

    variant: str
    config: str
    text_set: str
    engine: str  # one of RAW_ENGINES, "HF pipeline", "http", "grpc", "http direct", "grpc direct"
    concurrency: int
    measurement: Measurement = field(default_factory=Measurement)
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    label_mismatches: int = 0

    @property
    def served(self) -> bool:
        return self.engine in SERVED_ENGINES

    def add_stats(self, delta: dict[str, dict[str, float]]) -> None:
        for model, row in delta.items():
            mine = self.stats.setdefault(model, {key: 0.0 for key in row} | {"_weight": 0.0})
            weight = row["requests"]
            for key in ("queue", "compute_input", "compute_infer", "compute_output"):
                mine[key] = (mine[key] * mine["_weight"] + row[key] * weight) / max(mine["_weight"] + weight, 1.0)
            mine["requests"] += row["requests"]
            mine["executions"] += row["executions"]
            mine["_weight"] += weight
            mine["batch"] = mine["requests"] / mine["executions"] if mine["executions"] else 0.0


# ------------------------------------------------------------------------------------------------------ models

def run_step(command: list[str], what: str) -> None:
    LOGGER.info("%s: %s", what, " ".join(command))
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"{what} failed ({' '.join(command)}):\n{result.stderr[-3000:]}")


def newest_mtime(directory: Path) -> float:
    return max((path.stat().st_mtime for path in directory.rglob("*") if path.is_file()), default=0.0)


def ensure_demo(hf_dir: Path, onnx_dir: Path, python: str) -> None:
    """quickstart.sh's steps 2-3 for the default paths: build the demo model, convert it, when out of date."""
    run_step([python, "utils/build_demo_model.py", "--output-dir", str(hf_dir)], "building the demo model")
    report = onnx_dir / "conversion_report.json"
    if not report.is_file() or report.stat().st_mtime < newest_mtime(hf_dir):
        convert(hf_dir, onnx_dir, [], python)


def convert(hf_dir: Path, out_dir: Path, options: list[str], python: str) -> None:
    """utils/convert_to_onnx.py (it replaces its own previous output in out_dir, and nothing else)."""
    run_step([python, "utils/convert_to_onnx.py", "--model", str(hf_dir), "--model-storage", "local",
              "--output-dir", str(out_dir), *options], f"converting {' '.join(options) or 'fp32'}")


def ensure_variant(name: str, hf_dir: Path | None, work_dir: Path, python: str) -> Path:
    """work_dir/<name>: hf_dir converted with the variant's options, reused while newer than hf_dir."""
    out_dir = work_dir / "models" / name
    report = out_dir / "conversion_report.json"
    if hf_dir is None:
        raise BenchError(f"the {name} variant is converted from the Hugging Face model: pass --hf-dir")
    if report.is_file() and report.stat().st_mtime >= newest_mtime(hf_dir):
        optimization = json.loads(report.read_text(encoding="utf-8")).get("optimization", {})
        if optimization.get("fused") == ("--fuse" in VARIANT_OPTIONS[name]) and \
                optimization.get("quantized") == ("--quantize" in VARIANT_OPTIONS[name]):
            return out_dir
    convert(hf_dir, out_dir, VARIANT_OPTIONS[name], python)
    return out_dir


# ----------------------------------------------------------------------------------------------- measurement

def server_cpu_seconds(server: LocalServer) -> float:
    """CPU time of every process in the server's session (tritonserver and its backend stubs)."""
    if server.process is None:
        return 0.0
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == server.process.pid:  # field 6 (session id), counted after "pid (comm)"
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / os.sysconf("SC_CLK_TCK")


def passes_for(rate: float, seconds: float, count: int) -> int:
    """Whole passes over the texts (every engine sees the same texts) lasting about `seconds`."""
    return max(1, round(rate * seconds / count))


@dataclass
class Plan:
    """Everything measured for one text set, and how many passes each engine makes per round."""

    texts: list[str]
    raw: dict[tuple[str, str], RawOrt]  # (variant, engine)
    hf: HfPipeline | None
    passes: dict[str, int]
    bodies: list[tuple[bytes, int]]


def estimate_rate(run_one: Callable[[int], Any], count: int) -> float:
    probe = min(count, 12)
    return max(sequential(run_one, count, probe, warmup=2).texts_per_second, 0.1)


def texts_of(text_set: str, settings: Settings) -> list[Any]:
    if text_set == "short":
        return short_texts(settings.short_count)
    if text_set == "pairs":
        return short_pairs(settings.short_count)
    return long_texts(settings.long_count)


def measure(settings: Settings, variants: dict[str, Path], servers: dict[tuple[str, str, bool], LocalServer],
            hf_dir: Path | None) -> tuple[list[Row], dict[str, Any]]:
    """servers: (variant, config, pairs) -> the server of that variant and configuration, assembled with
    --text-pair when `pairs`."""
    rows: dict[tuple, Row] = {}
    labels_by_set: dict[str, dict[str, list[str]]] = {}
    for text_set in settings.sets:
        texts = texts_of(text_set, settings)
        raw = {(name, engine): RawOrt(path, texts, threads=settings.raw_threads, spinning=spinning)
               for name, path in variants.items() for engine, spinning in RAW_ENGINES.items()}
        hf = HfPipeline(hf_dir, texts, max_length_of(variants["fp32"])) if settings.hf and hf_dir else None
        passes = {name: passes_for(estimate_rate(raw[(name, "raw ORT")], len(texts)), settings.seconds, len(texts))
                  for name in variants}
        if hf is not None:
            passes["hf"] = passes_for(estimate_rate(hf, len(texts)), settings.seconds, len(texts))
        plan = Plan(texts, raw, hf, passes, http_bodies(texts))
        reference = {name: [raw[(name, "raw ORT")](i) for i in range(len(texts))] for name in variants}
        labels_by_set[text_set] = reference
        LOGGER.info("%s texts: %d, passes per round %s", text_set, len(texts), passes)
        for round_index in range(settings.rounds):
            LOGGER.info("%s round %d/%d", text_set, round_index + 1, settings.rounds)
            for name in variants:
                for engine in RAW_ENGINES:
                    row = rows.setdefault((name, "-", text_set, engine, 1), Row(name, "-", text_set, engine, 1))
                    row.measurement.extend(sequential(plan.raw[(name, engine)], len(texts), passes[name] * len(texts)))
                    settle()
                for (variant, config, pairs), server in servers.items():
                    if variant != name or pairs != (text_set == "pairs"):
                        continue
                    direct = [f"{p} direct" for p in settings.protocols] if settings.front_cost else []
                    for protocol in [*settings.protocols, *direct]:
                        for concurrency in settings.concurrency:
                            key = (name, config, text_set, protocol, concurrency)
                            row = rows.setdefault(key, Row(name, config, text_set, protocol, concurrency))
                            served_round(row, server, plan, passes[name], reference[name])
                            settle()
            if plan.hf is not None:
                row = rows.setdefault(("fp32", "-", text_set, "HF pipeline", 1),
                                      Row("fp32", "-", text_set, "HF pipeline", 1))
                row.measurement.extend(sequential(plan.hf, len(texts), passes["hf"] * len(texts)))
                settle()
    return list(rows.values()), labels_by_set


def settle() -> None:
    """A short pause between rounds: thread pools that spin after their last job (ONNX Runtime, OpenMP) stop."""
    time.sleep(0.2)


def served_round(row: Row, server: LocalServer, plan: Plan, passes: int, reference: list[str]) -> None:
    protocol = row.engine.split()[0]
    if row.engine.endswith("direct"):
        url = server.internal_urls()[0 if protocol == "http" else 1]
    else:
        url = server.http_url if protocol == "http" else server.grpc_url
    workers = make_workers(protocol, url, MODEL_NAME, plan.texts, row.concurrency, plan.bodies)
    try:
        before = server.stats()
        measurement = closed_loop(workers, len(plan.texts), passes * len(plan.texts),
                                  server_cpu=lambda: server_cpu_seconds(server))
        row.add_stats(stats_delta(before, server.stats()))
    finally:
        for worker in workers:
            worker.close()
    row.label_mismatches += sum(1 for index, label in measurement.labels if label != reference[index])
    row.measurement.extend(measurement)


# -------------------------------------------------------------------------------------------------- agreement

def heldout_texts() -> tuple[list[str], list[str]]:
    """The demo's held-out phrasings and their intents (the demo model's label names)."""
    data = json.loads(DEMO_INTENTS.read_text(encoding="utf-8"))
    pairs = [(text, name) for name, intent in data["intents"].items() for texts in intent["heldout"].values()
             for text in texts]
    return [text for text, _ in pairs], [name for _, name in pairs]


def agreement(fp32_dir: Path, int8_dir: Path, short_count: int) -> dict[str, Any]:
    """int8 top labels against fp32 (both raw ONNX Runtime) on held-out texts: the demo's held-out phrasings
    (utils/demo_intents.json) and the short benchmark texts; none of them was trained on."""
    import numpy as np

    heldout, truth = heldout_texts()
    sets = {"demo held-out": heldout, "short set": short_texts(short_count)}
    result: dict[str, Any] = {}
    for name, texts in sets.items():
        fp32, int8 = RawOrt(fp32_dir, texts), RawOrt(int8_dir, texts)
        expected = np.stack([fp32.probabilities(text) for text in texts])
        actual = np.stack([int8.probabilities(text) for text in texts])
        same = expected.argmax(axis=1) == actual.argmax(axis=1)
        top_two = np.sort(expected, axis=1)[:, -2:]
        result[name] = {"texts": len(texts), "agree": int(same.sum()),
                        "max_prob_diff": float(np.abs(expected - actual).max()),
                        "fp32_margins_of_flips": [round(float(m), 3) for m in (top_two[:, 1] - top_two[:, 0])[~same]]}
        if texts is heldout and set(truth) <= set(fp32.labels):  # the demo model: its accuracy, fp32 and int8
            labels = fp32.labels
            result[name]["correct"] = {
                "fp32": int(sum(labels[i] == t for i, t in zip(expected.argmax(axis=1), truth))),
                "int8": int(sum(labels[i] == t for i, t in zip(actual.argmax(axis=1), truth)))}
    total = sum(entry["texts"] for entry in result.values())
    result["all"] = {"texts": total, "agree": sum(entry["agree"] for entry in result.values())}  # type: ignore
    return result


# --------------------------------------------------------------------------------------------------- printing

COLUMNS = ("model", "config", "set", "engine", "conc", "texts/s", "x raw", "p50 ms", "x raw", "p99 ms", "x raw",
           "bench CPU", "server CPU", "CPU ms/text")


def table(rows: Sequence[Row]) -> tuple[str, list[dict[str, Any]]]:
    raw: dict[tuple[str, str], Row] = {}  # the faster raw ORT row of each model and set: the limit
    for row in rows:
        best = raw.get((row.variant, row.text_set))
        if row.engine in RAW_ENGINES and (best is None or row.measurement.texts_per_second >
                                          best.measurement.texts_per_second):
            raw[(row.variant, row.text_set)] = row
    order = {"raw ORT": 0, "raw ORT no-spin": 1, "HF pipeline": 2, "http": 3, "grpc": 4, "http direct": 5,
             "grpc direct": 6}
    lines, records = [], []
    for row in sorted(rows, key=lambda r: (r.variant != "fp32", r.variant, SETS.index(r.text_set), r.config != "-",
                                           r.config, order[r.engine], r.concurrency)):
        base = raw[(row.variant if row.engine != "HF pipeline" else "fp32", row.text_set)].measurement
        m = row.measurement
        record = {
            "model": row.variant, "config": row.config, "set": row.text_set, "engine": row.engine,
            "concurrency": row.concurrency, "texts": len(m.latencies), "texts_per_s": m.texts_per_second,
            "texts_per_s_ratio": m.texts_per_second / base.texts_per_second,
            "p50_ms": m.percentile_ms(50), "p50_ratio": m.percentile_ms(50) / base.percentile_ms(50),
            "p99_ms": m.percentile_ms(99), "p99_ratio": m.percentile_ms(99) / base.percentile_ms(99),
            "bench_cpu": m.client_cpu, "server_cpu": m.server_cpu_seconds / m.wall if row.served else 0.0,
            "cpu_ms_per_text": (m.client_cpu_seconds + m.server_cpu_seconds) * 1000.0 / max(len(m.latencies), 1),
            "reference": row is raw[(row.variant, row.text_set)], "label_mismatches": row.label_mismatches,
            "stats": {model: {key: value for key, value in figures.items() if key != "_weight"}
                      for model, figures in row.stats.items()},
        }
        records.append(record)
        lines.append((row.variant, row.config, row.text_set, row.engine + ("*" if record["reference"] else ""),
                      str(row.concurrency),
                      f"{record['texts_per_s']:.1f}", f"{record['texts_per_s_ratio']:.2f}", f"{record['p50_ms']:.2f}",
                      f"{record['p50_ratio']:.2f}", f"{record['p99_ms']:.2f}", f"{record['p99_ratio']:.2f}",
                      f"{record['bench_cpu']:.2f}", f"{record['server_cpu']:.2f}" if row.served else "-",
                      f"{record['cpu_ms_per_text']:.2f}"))
    widths = [max(len(column), *(len(line[i]) for line in lines)) for i, column in enumerate(COLUMNS)]
    text = ["  ".join(column.rjust(width) for column, width in zip(COLUMNS, widths))]
    text.append("  ".join("-" * width for width in widths))
    text.extend("  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in lines)
    return "\n".join(text), records


def find(records: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [r for r in records if all(r[key] == value for key, value in match.items())]


def not_judged_because(quick: bool, settings: Settings) -> str | None:
    """Why this run cannot judge the performance goals; None when it can (a full run)."""
    if quick:
        return (f"a --quick run is a smoke test: {settings.seconds:g} s per engine and round is too short to measure "
                "them")
    if settings.rounds * settings.seconds < JUDGED_SECONDS:
        return (f"--rounds x --seconds = {settings.rounds * settings.seconds:g} s per engine is too short to measure "
                f"them (at least {JUDGED_SECONDS:g} s)")
    return None


def goals(records: list[dict[str, Any]], agreement_figures: dict[str, Any] | None, judged: bool = True) -> list[str]:
    """One line per performance goal and measured row: MET or MISSED, or "-" when the run cannot judge them."""
    lines = []

    def verdict(ok: bool) -> str:
        if not judged:
            return "-     "
        return "MET   " if ok else "MISSED"

    raw = {(r["model"], r["set"]): r for r in records if r["reference"]}
    hf = {r["set"]: r for r in records if r["engine"] == "HF pipeline"}
    for r in find(records, model="fp32", concurrency=16):
        if r["engine"] not in ("http", "grpc"):
            continue
        goal = GOAL_BY_SET[r["set"]]
        lines.append(f"{verdict(r['texts_per_s_ratio'] >= goal)} fp32 {r['set']:5} {r['engine']:4} c16 "
                     f"[{r['config']}]: {r['texts_per_s']:.1f} texts/s = {r['texts_per_s_ratio']:.2f}x raw ORT "
                     f"(goal >= {goal:.2f}x)")
        if r["set"] in hf:
            ratio = r["texts_per_s"] / hf[r["set"]]["texts_per_s"]
            lines.append(f"{verdict(ratio >= GOAL_HF)} fp32 {r['set']:5} {r['engine']:4} c16 [{r['config']}]: "
                         f"{ratio:.2f}x the HF PyTorch pipeline (goal >= {GOAL_HF}x)")
    for r in find(records, model="fp32", concurrency=1):
        if r["engine"] not in ("http", "grpc"):
            continue
        extra = r["p50_ms"] - raw[("fp32", r["set"])]["p50_ms"]
        lines.append(f"{verdict(extra <= GOAL_P50_MS)} fp32 {r['set']:5} {r['engine']:4} c1  [{r['config']}]: p50 "
                     f"{r['p50_ms']:.2f} ms = raw ORT {raw[('fp32', r['set'])]['p50_ms']:.2f} ms {extra:+.2f} ms "
                     f"(goal <= +{GOAL_P50_MS:.0f} ms)")
    for r in find(records, model="int8", concurrency=16):
        if r["engine"] not in ("http", "grpc") or ("fp32", r["set"]) not in raw:
            continue
        ratio = r["texts_per_s"] / raw[("fp32", r["set"])]["texts_per_s"]
        lines.append(f"{verdict(ratio >= GOAL_INT8)} int8 {r['set']:5} {r['engine']:4} c16 [{r['config']}]: "
                     f"{r['texts_per_s']:.1f} texts/s = {ratio:.2f}x the fp32 raw ORT limit (goal >= {GOAL_INT8}x)")
    if agreement_figures:
        for name, entry in agreement_figures.items():
            share = entry["agree"] / entry["texts"]
            flips = entry.get("fp32_margins_of_flips")
            lines.append(f"{verdict(share >= GOAL_AGREEMENT)} int8 label agreement with fp32, {name}: "
                         f"{entry['agree']}/{entry['texts']} = {share:.1%} (goal >= {GOAL_AGREEMENT:.0%})"
                         + (f"; max |prob diff| {entry['max_prob_diff']:.3f}" if "max_prob_diff" in entry else "")
                         + (f"; fp32 top-2 margins of the flipped texts {flips}" if flips else "")
                         + (f"; correct labels: fp32 {entry['correct']['fp32']}, int8 {entry['correct']['int8']}"
                            if "correct" in entry else ""))
    return lines


def front_cost(records: list[dict[str, Any]]) -> list[str]:
    """Served through the gateway vs straight to tritonserver, same server, same round (--front-cost)."""
    lines = []
    for r in records:
        if r["engine"] not in ("http", "grpc"):
            continue
        direct = find(records, model=r["model"], config=r["config"], set=r["set"], engine=f"{r['engine']} direct",
                      concurrency=r["concurrency"])
        if direct:
            d = direct[0]
            lines.append(f"{r['model']} {r['set']:5} {r['engine']:4} c{r['concurrency']:<2} [{r['config']}]: "
                         f"texts/s {r['texts_per_s']:.1f} vs {d['texts_per_s']:.1f} direct = "
                         f"{r['texts_per_s'] / d['texts_per_s']:.2f}x; p50 {r['p50_ms']:.2f} vs {d['p50_ms']:.2f} ms "
                         f"({r['p50_ms'] - d['p50_ms']:+.2f} ms); served/raw ORT {r['texts_per_s_ratio']:.2f} vs "
                         f"{d['texts_per_s_ratio']:.2f} direct")
    return lines


def breakdown(records: list[dict[str, Any]]) -> list[str]:
    """Where the server's time goes, per model, per request (from /v2/models/stats)."""
    lines = []
    for r in records:
        if r["engine"] != "http" or r["concurrency"] not in (1, max(x["concurrency"] for x in records)):
            continue
        parts = []
        for model in ("text_preprocessing", "model_onnx", "post_processing"):
            s = r["stats"].get(model)
            if s:
                parts.append(f"{model} batch {s['batch']:.2f} queue {s['queue']:.2f} compute "
                             f"{s['compute_input'] + s['compute_infer'] + s['compute_output']:.2f}")
        ensemble = r["stats"].get(MODEL_NAME, {})
        lines.append(f"{r['model']} {r['set']} c{r['concurrency']} [{r['config']}]: end-to-end p50 "
                     f"{r['p50_ms']:.2f} ms; ensemble {ensemble.get('compute_infer', 0.0):.2f} ms; " + "; ".join(parts))
    return lines


# --------------------------------------------------------------------------------------------------------- CLI

def csv_list(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(value: str) -> list[Any]:
        try:
            return [kind(item) for item in value.split(",") if item]
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err
    return parse


def config_pair(value: str) -> tuple[str, list[str]]:
    name, sep, options = value.partition("=")
    if not sep or not name or not name.replace("-", "").replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(f"expected NAME=OPTIONS (e.g. m2t1='--model-instances 2 --ort-threads 1'), "
                                         f"got {value!r}")
    return name, options.split()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  ./bench/run.sh                      # full run, demo model, fp32 (about 3 minutes on 2 cores)\n"
               "  ./bench/run.sh --quantized          # also the int8 model (fused + dynamic int8)\n"
               "  ./bench/run.sh --quick              # smoke test, well under a minute (goals not judged)\n"
               "  ./bench/run.sh --sets pairs         # pairs of short texts (--text-pair), about 1.5 minutes\n"
               "  ./bench/run.sh --config default= --config m1t2='--model-instances 1 --ort-threads 2'\n"
               "                                      # compare server settings side by side in one run\n"
               "  ./bench/run.sh --sizes tiny,mini,base --cores 1,2\n"
               "                                      # sizing mode: sizes x cores x 1,16,64 in flight vs raw ORT\n"
               "  ./bench/run.sh --sizes mini --cores 2 --quick   # its smoke test\n")
    parser.add_argument("--hf-dir", type=Path, default=None,
                        help=f"the Hugging Face model (PyTorch pipeline, --fuse/--quantized conversions); default "
                             f"{DEMO_HF.relative_to(ROOT)}, built by utils/build_demo_model.py when missing")
    parser.add_argument("--onnx-dir", type=Path, default=None,
                        help="utils/convert_to_onnx.py output to serve as fp32; default "
                             f"{DEMO_ONNX.relative_to(ROOT)}, converted from --hf-dir when missing or older")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "build" / "bench",
                        help="conversions, assembled repositories, server logs and results.json (default build/bench)")
    parser.add_argument("--fused", action="store_true", help="also serve an fp32 model converted with --fuse")
    parser.add_argument("--quantized", action="store_true",
                        help="also serve an int8 model (converted with --fuse --quantize) and print its label "
                             "agreement with fp32 on held-out texts")
    parser.add_argument("--config", type=config_pair, action="append", metavar="NAME=OPTIONS",
                        help="server settings to serve side by side: make_triton_image.sh options, e.g. "
                             "m2t1='--model-instances 2 --ort-threads 1'; repeatable (default: default= , the "
                             "template's defaults)")
    parser.add_argument("--sets", type=csv_list(str), default=None,
                        help="text sets: short, long, pairs (pairs of short texts, served by the model assembled "
                             "with --text-pair; its conversion must have passed the parity check on pairs) "
                             "(default short,long; sizing mode short)")
    parser.add_argument("--concurrency", type=csv_list(int), default=None,
                        help="requests in flight (default 1,4,16; sizing mode 1,16,64)")
    parser.add_argument("--protocols", type=csv_list(str), default=["http", "grpc"], help="default http,grpc")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 2; --quick 1)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="about how long one engine runs per round (default 3; --quick 0.2)")
    parser.add_argument("--raw-threads", type=int, default=0,
                        help="intra-op threads of the raw ONNX Runtime reference (default 0: ONNX Runtime's default, "
                             "one per core)")
    parser.add_argument("--no-hf", action="store_true", help="skip the Hugging Face PyTorch pipeline")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 16 short and 4 long texts, 1 round of about 0.2 s per engine; the "
                             "performance goals are not judged (only a full run judges them)")
    parser.add_argument("--front-cost", action="store_true",
                        help="also send every served round straight to tritonserver's internal port behind the gateway "
                             "(\"direct\" rows, same server, interleaved) and print what the front costs")
    parser.add_argument("--sizes", type=csv_list(str), default=None,
                        help="sizing mode: model sizes to build (random weights) and serve: tiny (rubert-tiny2 shape), "
                             "mini (MiniLM-L6 shape), base (BERT-base shape); each against raw ONNX Runtime's best "
                             "throughput (N processes x 1 thread) and best latency (1 x N threads) on the same N "
                             "cores (default with --cores: mini)")
    parser.add_argument("--cores", type=csv_list(int), default=None,
                        help="sizing mode: confine the server (its whole process tree, taskset) to the first N of "
                             "this process's CPUs, for each N given, e.g. 1,2; the load generator runs in separate "
                             "processes on the other CPUs, or on the same ones when none are left (default with "
                             f"--sizes: 1 and all {len(os.sched_getaffinity(0))})")
    parser.add_argument("--load-processes", type=int, default=0,
                        help="sizing mode: processes of the load generator (default 0: one per CPU it runs on)")
    parser.add_argument("--json", type=Path, help="also write the results here (default WORK_DIR/results.json)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def settings_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Settings:
    if args.sets is None:
        args.sets = ["short"] if args.sizes is not None or args.cores is not None else ["short", "long"]
    unknown = [s for s in args.sets if s not in SETS]
    if unknown:
        parser.error(f"--sets: unknown set(s) {unknown}; choose from {','.join(SETS)}")
    bad = [p for p in args.protocols if p not in ("http", "grpc")]
    if bad:
        parser.error(f"--protocols: unknown protocol(s) {bad}; choose from http,grpc")
    sizing = args.sizes is not None or args.cores is not None
    if args.concurrency is None:
        args.concurrency = [1, 16, 64] if sizing else [1, 4, 16]
    if not args.concurrency or min(args.concurrency) < 1:
        parser.error("--concurrency: give positive integers, e.g. 1,4,16")
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 2)
    seconds = args.seconds if args.seconds is not None else (0.2 if args.quick else 3.0)
    if rounds < 1 or seconds <= 0:
        parser.error("--rounds and --seconds must be positive")
    return Settings(sets=args.sets, concurrency=sorted(set(args.concurrency)), protocols=args.protocols,
                    rounds=rounds, seconds=seconds, short_count=16 if args.quick else 200,
                    long_count=4 if args.quick else 24, hf=not args.no_hf, raw_threads=args.raw_threads,
                    front_cost=args.front_cost)


def resolve_models(args: argparse.Namespace, python: str) -> tuple[Path | None, Path]:
    hf_dir = args.hf_dir.resolve() if args.hf_dir else None
    onnx_dir = args.onnx_dir.resolve() if args.onnx_dir else None
    if hf_dir is None and onnx_dir is None:
        ensure_demo(DEMO_HF, DEMO_ONNX, python)
        return DEMO_HF, DEMO_ONNX
    if hf_dir is not None and not (hf_dir / "config.json").is_file():
        raise BenchError(f"--hf-dir {hf_dir} holds no Hugging Face model (no config.json)")
    if onnx_dir is None:
        assert hf_dir is not None
        onnx_dir = args.work_dir.resolve() / "models" / "fp32"
        report = onnx_dir / "conversion_report.json"
        if not report.is_file() or report.stat().st_mtime < newest_mtime(hf_dir):
            convert(hf_dir, onnx_dir, [], python)
    if not (onnx_dir / "conversion_report.json").is_file():
        raise BenchError(f"--onnx-dir {onnx_dir} is not a utils/convert_to_onnx.py output (no conversion_report.json)")
    return hf_dir, onnx_dir


def main_sizing(args: argparse.Namespace, parser: argparse.ArgumentParser, settings: Settings,
                configs: dict[str, list[str]], python: str, work_dir: Path, started: float) -> int:
    """The sizing mode (--sizes, --cores): bench/matrix.py."""
    sizes = args.sizes or ["mini"]
    allowed = len(os.sched_getaffinity(0))
    cores = args.cores or sorted({1, allowed})
    problem = matrix.check(sizes, cores, settings.sets, args.load_processes)
    if problem:
        parser.error(problem)
    try:
        records = matrix.run(sizes, cores, settings, configs, args.load_processes, work_dir, python,
                             not_judged_because(args.quick, settings), texts_of)
    except (BenchError, ServerError, ShapeError, PoolError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"\nTotal time {time.monotonic() - started:.0f} s.")
    output = args.json or work_dir / "results.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"settings": settings.__dict__, "configs": configs, "sizes": sizes, "cores": cores,
                                  "rows": records}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"Results: {output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = settings_from(args, parser)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    python = os.environ.get("TRITONED_PYTHON", sys.executable)
    work_dir = args.work_dir.resolve()
    configs = dict(args.config or [("default", [])])
    servers: dict[tuple[str, str, bool], LocalServer] = {}
    started = time.monotonic()
    if args.sizes is not None or args.cores is not None:
        return main_sizing(args, parser, settings, configs, python, work_dir, started)
    try:
        hf_dir, onnx_dir = resolve_models(args, python)
        variants = {"fp32": onnx_dir}
        if args.fused:
            variants["fused"] = ensure_variant("fused", hf_dir, work_dir, python)
        if args.quantized:
            variants["int8"] = ensure_variant("int8", hf_dir, work_dir, python)
        kinds = sorted({text_set == "pairs" for text_set in settings.sets})
        for variant, path in variants.items():
            for config, options in configs.items():
                for pairs in kinds:
                    build_dir = work_dir / "repos" / f"{variant}-{config}{'-pairs' if pairs else ''}"
                    repository = assemble(path, build_dir, MODEL_NAME, [*options, *(["--text-pair"] if pairs else [])],
                                          python)
                    servers[(variant, config, pairs)] = LocalServer(
                        repository=repository, build_dir=build_dir, log=build_dir / "server.log",
                        python=python).launch()
        for server in servers.values():
            server.wait_ready()
        LOGGER.info("%d server(s) ready; measuring %s", len(servers), settings)
        rows, _ = measure(settings, variants, servers, hf_dir)
        agreement_figures = (agreement(onnx_dir, variants["int8"], settings.short_count)
                             if "int8" in variants and hf_dir else None)
    except (BenchError, ServerError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        stop_all(list(servers.values()))

    text, records = table(rows)
    print(f"\nServed (Triton 2.51, ensemble text_preprocessing -> model_onnx -> post_processing, one text (or "
          f"pair) per request) vs raw ONNX Runtime in-process on the same model.onnx and texts; {settings.rounds} interleaved "
          f"round(s); {os.cpu_count()} CPU(s); x raw = figure / the figure of the raw ORT row marked * (the faster raw "
          f"ORT of the same model and set: the limit).")
    for name, options in configs.items():
        print(f"config {name}: make_triton_image.sh {' '.join(options) or '(template defaults)'}")
    print(text)
    print("bench CPU: cores this process used (served rows: the load generator, taken from the server's cores; "
          "in-process rows: the engine itself). server CPU: cores used by tritonserver and its backend stubs.\n"
          "CPU ms/text: (bench + server) CPU time per text: the cost of a text, little affected by other load.")
    differing = [f"{r['model']} {r['set']} {r['engine']} c{r['concurrency']}: {r['label_mismatches']}/{r['texts']}"
                 for r in records if r["label_mismatches"]]
    print("served labels that differ from raw ORT's on the same model and text: "
          + ("; ".join(differing) if differing else "none"))
    if any(r["model"] == "int8" for r in records if r["label_mismatches"]):
        print("  (int8: model_onnx's dynamic batcher runs equal-length requests as one batch, and dynamic "
              "quantization picks one activation scale per batch, so a near-tie text can flip with its neighbours)")
    why_not = not_judged_because(args.quick, settings)
    if why_not is None:
        print("\nPerformance goals:")
    else:
        print(f"\nPerformance goals: not judged in this run ({why_not}); the figures below are a smoke check only. "
              "A full run judges them: ./bench/run.sh without --quick (README, Производительность).")
    for line in goals(records, agreement_figures, judged=why_not is None):
        print(f"  {line}")
    if settings.front_cost:
        print("\nWhat the front (gateway) costs: through it vs straight to tritonserver, same server, same rounds:")
        for line in front_cost(records):
            print(f"  {line}")
    print("\nWhere the time goes (ms per request, /v2/models/stats; compute = input + infer + output):")
    for line in breakdown(records):
        print(f"  {line}")
    print(f"\nTotal time {time.monotonic() - started:.0f} s.")
    output = args.json or work_dir / "results.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"settings": settings.__dict__, "configs": configs, "rows": records,
                                  "agreement": agreement_figures}, indent=1, ensure_ascii=False) + "\n",
                      encoding="utf-8")
    print(f"Results: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
