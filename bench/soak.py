#!/usr/bin/env python3
"""Soak test: a converted model served through the real ensemble on the local Triton (make_triton_image.sh
--no-build + serve_local.sh) under constant concurrent load for a long time. Every answer is checked; the
latency is reported per time window and the server's memory (tritonserver plus its Python backend stubs)
at the start and at the end.

Expected answers come from ONNX Runtime in this process, on the very model.onnx and tokenizer.json that the
assembled repository serves, with the same truncation: the served label must be the reference's and the
probabilities within --tolerance of it. Texts whose two best classes are closer than --min-margin are left
out of the mix (a 1e-6 difference between batch shapes could flip such a label: not an error).

Exits 0 when no request failed and memory grew less than --max-growth; 1 otherwise; 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from local_server import ROOT, LocalServer, assemble, max_sequence_length

DEFAULT_MODEL_DIR = ROOT / "build" / "demo" / "onnx"
DEFAULT_BUILD_DIR = ROOT / "build" / "soak"
DEMO_TEXTS = ROOT / "utils" / "demo_intents.json"
MODEL_NAME = "ensemble_model"
MIB = 1024 * 1024

log = logging.getLogger("soak")


# ---------------------------------------------------------------------------------------------- texts
def phrases() -> list[str]:
    """Short support-style phrases (RU/EN) from utils/demo_intents.json, plus a few of other shapes."""
    data = json.loads(DEMO_TEXTS.read_text(encoding="utf-8"))
    found: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, list):
            found.extend(item for item in node if isinstance(item, str))
        elif isinstance(node, dict):
            for key, value in node.items():
                if key != "description":
                    collect(value)

    collect(data["intents"])
    return sorted(set(found)) + ["", "ok", "спасибо за помощь 🙂", "12345", "?!"]


def make_texts(count_long: int, seed: int) -> tuple[list[str], list[str]]:
    """(short texts, long texts): the phrases as they are, and count_long texts of 40-400 phrases each
    (far beyond any model's limit: the served preprocessing must truncate them)."""
    short = phrases()
    rng = random.Random(seed)
    long = [" ".join(rng.choice(short) for _ in range(rng.randint(40, 400))) for _ in range(count_long)]
    return short, long


# ------------------------------------------------------------------------------------------ reference
@dataclass(frozen=True)
class Expected:
    label: str
    probabilities: np.ndarray
    margin: float  # best probability minus the second best


def reference(repository: Path, texts: list[str]) -> list[Expected]:
    """ONNX Runtime in-process on the repository's model.onnx and tokenizer, one text at a time."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(repository / "text_preprocessing" / "1" / "tokenizer" / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_sequence_length(repository))
    id2label = json.loads((repository / "post_processing" / "1" / "id2label.json").read_text(encoding="utf-8"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(repository / "model_onnx" / "1" / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    expected = []
    for encoding in tokenizer.encode_batch(texts):
        feed = {"input_ids": np.array([encoding.ids], dtype=np.int64),
                "attention_mask": np.array([encoding.attention_mask], dtype=np.int64)}
        if "token_type_ids" in inputs:
            feed["token_type_ids"] = np.array([encoding.type_ids], dtype=np.int64)
        logits = session.run(None, feed)[0][0].astype(np.float64)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        best, second = np.sort(probabilities)[::-1][:2] if len(probabilities) > 1 else (probabilities[0], 0.0)
        expected.append(Expected(id2label[str(int(probabilities.argmax()))], probabilities, float(best - second)))
    return expected


# ----------------------------------------------------------------------------------------------- load
@dataclass
class Record:
    done: float  # time.monotonic() when the answer came
    latency: float  # seconds
    error: str | None


@dataclass
class Recorder:
    """Thread-safe sink of request records, drained once per window."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    records: list[Record] = field(default_factory=list)

    def add(self, record: Record) -> None:
        with self.lock:
            self.records.append(record)

    def drain(self) -> list[Record]:
        with self.lock:
            records, self.records = self.records, []
        return records


def make_client(protocol: str, url: str) -> tuple[Any, Any]:
    """(client, module) for one worker: tritonclient's clients are not shared between threads."""
    if protocol == "grpc":
        import tritonclient.grpc as module
        return module.InferenceServerClient(url), module
    import tritonclient.http as module
    return module.InferenceServerClient(url, connection_timeout=120, network_timeout=120), module


def check(result: Any, want: Expected, tolerance: float) -> str | None:
    """None when the answer is the expected one, else what is wrong."""
    label = result.as_numpy("label").reshape(-1)[0]
    label = label.decode() if isinstance(label, bytes) else str(label)
    probabilities = result.as_numpy("probabilities").reshape(-1)
    score = float(result.as_numpy("score").reshape(-1)[0])
    if label != want.label:
        return f"label {label!r}, expected {want.label!r}"
    if probabilities.shape != want.probabilities.shape:
        return f"probabilities of shape {probabilities.shape}, expected {want.probabilities.shape}"
    diff = float(np.abs(probabilities - want.probabilities).max())
    if diff > tolerance or abs(score - want.probabilities.max()) > tolerance:
        return f"probabilities differ from the reference by {diff:.2e} (tolerance {tolerance:.0e})"
    return None


def worker(index: int, args: argparse.Namespace, url: str, pool: list[tuple[str, Expected]],
           long_fraction_pool: tuple[list[int], list[int]], stop: threading.Event, recorder: Recorder) -> None:
    rng = random.Random(args.seed * 1000 + index)
    short_rows, long_rows = long_fraction_pool
    client, module = make_client(args.protocol, url)
    while not stop.is_set():
        rows = long_rows if long_rows and rng.random() < args.long_fraction else short_rows
        text, want = pool[rng.choice(rows)]
        started = time.monotonic()
        error: str | None
        try:
            inp = module.InferInput("text_input", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[text.encode("utf-8")]], dtype=np.object_))
            result = client.infer(MODEL_NAME, [inp])
            error = check(result, want, args.tolerance)
        except Exception as exc:  # noqa: BLE001 - every failure is counted and reported, the load goes on
            error = f"{type(exc).__name__}: {exc}"[:300]
        recorder.add(Record(time.monotonic(), time.monotonic() - started, error))
    try:
        client.close()
    except Exception:  # noqa: BLE001 - closing a broken client
        pass


# -------------------------------------------------------------------------------------------- report
def percentile_ms(latencies: list[float], q: float) -> float:
    return float(np.percentile(latencies, q) * 1000) if latencies else float("nan")


@dataclass
class Totals:
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)

    def add(self, records: list[Record], keep_latencies: bool = True) -> tuple[int, int]:
        errors = 0
        for record in records:
            if record.error is not None:
                errors += 1
                kind = record.error.split(",")[0][:120]
                self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
        self.requests += len(records)
        self.errors += errors
        if keep_latencies:
            self.latencies.extend(r.latency for r in records if r.error is None)
        return len(records), errors


def process_table(server: LocalServer) -> str:
    return ", ".join(f"{name}[{pid}] {rss / MIB:.1f}" for pid, name, rss in sorted(server.server_processes()))


def run(args: argparse.Namespace) -> int:
    model_dir = args.model_dir.resolve()
    for name in ("model.onnx", "tokenizer", "id2label.json"):
        if not (model_dir / name).exists():
            hint = (" (build the demo: .venv/bin/python utils/build_demo_model.py --output-dir build/demo/hf, then "
                    ".venv/bin/python utils/convert_to_onnx.py --model build/demo/hf --model-storage local "
                    "--output-dir build/demo/onnx)" if model_dir == DEFAULT_MODEL_DIR else "")
            print(f"soak.py: {model_dir}/{name} not found: --model-dir must be utils/convert_to_onnx.py's "
                  f"output{hint}", file=sys.stderr)
            return 2
    build_dir = args.build_dir.resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    repository = assemble(model_dir, build_dir, MODEL_NAME)

    short, long = make_texts(args.long_texts, args.seed)
    texts = short + long
    expected = reference(repository, texts)
    pool = [(t, e) for t, e in zip(texts, expected) if e.margin >= args.min_margin]
    dropped = len(texts) - len(pool)
    short_set = set(short)
    short_rows = [i for i, (text, _) in enumerate(pool) if text in short_set]
    long_rows = [i for i, (text, _) in enumerate(pool) if text not in short_set]
    if not short_rows:
        print("soak.py: every short text is a near tie for this model (see --min-margin)", file=sys.stderr)
        return 2

    server = LocalServer(repository=repository, log=build_dir / "server.log", build_dir=build_dir)
    print(f"soak: {model_dir} as '{MODEL_NAME}' on the local Triton (serve_local.sh, log {server.log})")
    print(f"soak: {args.concurrency} concurrent {args.protocol.upper()} clients, {args.warmup:g} s warm-up + "
          f"{args.duration:g} s measured, windows of {args.window:g} s; texts: {len(short_rows)} short, "
          f"{len(long_rows)} long ({args.long_fraction:.0%} of requests), {dropped} near ties left out; "
          f"expected answers: ONNX Runtime in-process on the same model.onnx + tokenizer", flush=True)
    totals = Totals()
    stop = threading.Event()
    recorder = Recorder()
    try:
        server.start()
        url = server.grpc_url if args.protocol == "grpc" else server.http_url
        threads = [threading.Thread(target=worker, name=f"client-{i}", daemon=True,
                                    args=(i, args, url, pool, (short_rows, long_rows), stop, recorder))
                   for i in range(args.concurrency)]
        for thread in threads:
            thread.start()

        time.sleep(args.warmup)
        warm_requests, warm_errors = totals.add(recorder.drain(), keep_latencies=False)
        start_rss = server.rss_bytes()
        print(f"warm-up: {warm_requests} requests, {warm_errors} errors; server memory {start_rss / MIB:.1f} MiB "
              f"({process_table(server)})", flush=True)
        print(f"{'window':>6}  {'seconds':>11}  {'requests':>8}  {'errors':>6}  {'req/s':>7}  {'p50_ms':>8}  "
              f"{'p99_ms':>8}  {'rss_mib':>8}", flush=True)
        measured_start = time.monotonic()
        end = measured_start + args.duration
        window_start, number = measured_start, 0
        while window_start < end - 1e-6 and server.alive():
            window_end = min(window_start + args.window, end)
            time.sleep(max(0.0, window_end - time.monotonic()))
            records = recorder.drain()
            count, errors = totals.add(records)
            latencies = [r.latency for r in records if r.error is None]
            number += 1
            span = time.monotonic() - window_start
            print(f"{number:>6}  {window_start - measured_start:>5.0f}-{window_end - measured_start:<5.0f}  "
                  f"{count:>8}  {errors:>6}  {count / span:>7.1f}  {percentile_ms(latencies, 50):>8.1f}  "
                  f"{percentile_ms(latencies, 99):>8.1f}  {server.rss_bytes() / MIB:>8.1f}", flush=True)
            window_start = window_end
        end_rss = server.rss_bytes()
        server_alive = server.alive()
        end_table = process_table(server)
        stop.set()
        for thread in threads:
            thread.join(timeout=150)
        totals.add(recorder.drain(), keep_latencies=False)  # answers that came after the last window
    finally:
        stop.set()
        server.stop()

    growth = (end_rss - start_rss) / start_rss * 100 if start_rss else float("inf")
    print(f"memory: start {start_rss / MIB:.1f} MiB (after warm-up), end {end_rss / MIB:.1f} MiB ({end_table}), "
          f"growth {growth:+.2f}% (limit {args.max_growth:g}%)")
    print(f"total: {totals.requests} requests served, {totals.errors} errors, "
          f"p50 {percentile_ms(totals.latencies, 50):.1f} ms, p99 {percentile_ms(totals.latencies, 99):.1f} ms")
    for kind, count in sorted(totals.error_kinds.items(), key=lambda item: -item[1])[:10]:
        print(f"  error x{count}: {kind}")
    failures = []
    if totals.errors:
        failures.append(f"{totals.errors} errors")
    if not server_alive:
        failures.append("the server died")
    if not growth < args.max_growth:
        failures.append(f"memory grew {growth:.2f}% (>= {args.max_growth:g}%)")
    if totals.requests == 0:
        failures.append("no request was served")
    print(f"result: {'FAIL: ' + '; '.join(failures) if failures else 'PASS'}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "model_dir": str(model_dir), "protocol": args.protocol, "concurrency": args.concurrency,
            "warmup_s": args.warmup, "duration_s": args.duration, "requests": totals.requests,
            "errors": totals.errors, "error_kinds": totals.error_kinds,
            "p50_ms": percentile_ms(totals.latencies, 50), "p99_ms": percentile_ms(totals.latencies, 99),
            "rss_start_bytes": start_rss, "rss_end_bytes": end_rss, "rss_growth_pct": growth,
            "texts_short": len(short_rows), "texts_long": len(long_rows), "near_ties_dropped": dropped,
            "passed": not failures,
        }, indent=2) + "\n", encoding="utf-8")
    return 1 if failures else 0


def positive(kind: type) -> Any:
    def parse(value: str) -> Any:
        number = kind(value)
        if number <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
        return number
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Example (the soak of the README): .venv/bin/python bench/soak.py --duration 600 --concurrency 32",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR,
                        help="output of utils/convert_to_onnx.py (model.onnx, tokenizer/, id2label.json); "
                             "the default is the demo model that quickstart.sh builds")
    parser.add_argument("--duration", type=positive(float), default=600.0, help="measured seconds of load")
    parser.add_argument("--warmup", type=float, default=30.0,
                        help="seconds of load before the measurement starts (memory baseline taken after it)")
    parser.add_argument("--concurrency", type=positive(int), default=32, help="requests in flight at any time")
    parser.add_argument("--window", type=positive(float), default=60.0, help="seconds per reported window")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http", help="client protocol")
    parser.add_argument("--long-fraction", type=float, default=0.25,
                        help="share of requests that carry a long text (truncated by the server)")
    parser.add_argument("--long-texts", type=int, default=64, help="how many different long texts")
    parser.add_argument("--max-growth", type=positive(float), default=10.0,
                        help="fail when the server's memory grows by this many percent or more")
    parser.add_argument("--tolerance", type=positive(float), default=1e-4,
                        help="largest allowed difference from the reference probabilities")
    parser.add_argument("--min-margin", type=float, default=1e-3,
                        help="texts whose two best probabilities are closer than this are left out")
    parser.add_argument("--seed", type=int, default=0, help="seed of the text mix")
    parser.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD_DIR,
                        help="where the repository is assembled and the server log written")
    parser.add_argument("--json", type=Path, help="also write the summary as JSON to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    args = parser.parse_args(argv)
    if not 0 <= args.long_fraction <= 1:
        parser.error("--long-fraction must be between 0 and 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    try:
        return run(args)
    except (RuntimeError, TimeoutError) as error:
        print(f"soak.py: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
