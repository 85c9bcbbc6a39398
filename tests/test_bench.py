"""Smoke test of the benchmark (bench/run.sh --quick) on a tiny BERT: it serves the model on the real Triton,
fp32 and int8, and prints one table with every row and column and sane positive figures; the pair set
(--sets pairs, the model served with --text-pair) in a second, smaller run. The speed goals themselves are not
checked here (they need the real model and a quiet machine); a quick run must not judge them."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT, run_bench_tool

sys.path.insert(0, str(ROOT))  # the bench package

COLUMNS = ["model", "config", "set", "engine", "conc", "texts/s", "x raw", "p50 ms", "x raw", "p99 ms", "x raw",
           "bench CPU", "server CPU", "CPU ms/text"]
CONCURRENCY = (1, 4, 16)
# Seconds per engine and round of the runs below (--quick alone: 0.2). Every engine still makes at least one whole
# pass over its texts, which is all the assertions need; the served engines run as many passes as raw ORT does in
# that time (at a tenth of its speed), so 0.2 s spent most of the module's time measuring.
QUICK_SECONDS = "0.05"


@pytest.fixture(scope="module")
def bench_run(tiny_artifacts, tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    artifacts = tiny_artifacts("bert")
    work = tmp_path_factory.mktemp("bench")
    result = subprocess.run(
        [str(ROOT / "bench" / "run.sh"), "--quick", "--quantized", "--seconds", QUICK_SECONDS,
         "--hf-dir", str(artifacts.hf_dir), "--onnx-dir", str(artifacts.out_dir), "--work-dir", str(work),
         "--json", str(work / "results.json")],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result, json.loads((work / "results.json").read_text(encoding="utf-8"))


def table_lines(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() and line.split()[0] == "model")
    assert lines[start].split() == " ".join(COLUMNS).split()
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        if re.match(r"^\s*(fp32|int8)\s", line):
            rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def test_table_has_every_row_and_column(bench_run) -> None:
    result, _ = bench_run
    rows = table_lines(result.stdout)
    keys = {(row[0], row[2], row[3].rstrip("*"), row[4]) for row in rows}
    for model in ("fp32", "int8"):
        for text_set in ("short", "long"):
            assert (model, text_set, "raw ORT", "1") in keys
            assert (model, text_set, "raw ORT no-spin", "1") in keys
            for protocol in ("http", "grpc"):
                for concurrency in CONCURRENCY:
                    assert (model, text_set, protocol, str(concurrency)) in keys, (model, text_set, protocol)
        assert ("fp32", "short", "HF pipeline", "1") in keys
    assert all(len(row) == len(COLUMNS) for row in rows), rows
    # Exactly one reference (the limit) per model and set, and its ratios are 1.
    references = [row for row in rows if row[3].endswith("*")]
    assert len(references) == 4
    assert all(row[6] == row[8] == row[10] == "1.00" for row in references)


def test_figures_are_sane(bench_run) -> None:
    _, results = bench_run
    for row in results["rows"]:
        assert row["texts"] > 0, row
        for key in ("texts_per_s", "texts_per_s_ratio", "p50_ms", "p99_ms", "cpu_ms_per_text"):
            assert row[key] > 0, (key, row)
        assert row["p99_ms"] >= row["p50_ms"]
        if row["engine"] in ("http", "grpc"):
            assert row["server_cpu"] > 0, row
            assert set(row["stats"]) >= {"text_preprocessing", "model_onnx", "post_processing"}
            if row["model"] == "fp32":
                assert row["label_mismatches"] == 0, row  # served answers are the raw model's


def test_a_quick_run_shows_the_goals_figures_but_judges_none(bench_run) -> None:
    result, results = bench_run
    assert "\nPerformance goals: not judged in this run (a --quick run is a smoke test" in result.stdout
    assert "A full run judges them: ./bench/run.sh without --quick" in result.stdout
    assert not re.search(r"\b(MET|MISSED)\b", result.stdout), "a quick run judged a goal"
    assert re.search(r"\n  - +fp32 short http c16 \[default\]: [\d.]+ texts/s = [\d.]+x raw ORT \(goal >= 0.90x\)",
                     result.stdout)
    assert re.search(r"\n  - +int8 label agreement with fp32, all: \d+/\d+", result.stdout)
    assert "Where the time goes" in result.stdout and "model_onnx batch" in result.stdout
    agreement = results["agreement"]
    assert agreement["all"]["texts"] == agreement["demo held-out"]["texts"] + agreement["short set"]["texts"]
    for output in (result.stdout, result.stderr):  # the project's goals, not a work item's
        assert "issue" not in output.lower(), [line for line in output.splitlines() if "issue" in line.lower()]


def test_a_full_run_judges_every_goal(bench_run) -> None:
    """goals() of the real figures above, as a full run calls it: every line is MET or MISSED, and the verdict
    follows the figure (quick-run figures, so either verdict may come)."""
    from bench.bench import GOAL_SHORT, build_parser, goals, not_judged_because, settings_from

    _, results = bench_run
    lines = goals(results["rows"], results["agreement"], judged=True)
    assert lines and all(re.match(r"(MET   |MISSED) ", line) for line in lines), lines
    for line in lines:
        match = re.search(r"= ([\d.]+)x raw ORT \(goal >= ([\d.]+)x\)", line)
        if match:  # the printed ratio is rounded to 2 decimals
            ratio, goal = float(match.group(1)), float(match.group(2))
            assert ratio >= goal - 0.005 if line.startswith("MET") else ratio <= goal + 0.005, line
    assert any(f"(goal >= {GOAL_SHORT:.2f}x)" in line for line in lines)

    parser = build_parser()

    def why_not(*argv: str) -> str | None:
        args = parser.parse_args(list(argv))
        return not_judged_because(args.quick, settings_from(args, parser))
    assert why_not() is None  # the defaults are a full run
    assert "--quick" in why_not("--quick")
    assert "too short" in why_not("--quick", "--rounds", "3", "--seconds", "5")
    assert "--rounds x --seconds = 1 s" in why_not("--rounds", "1", "--seconds", "1")


def test_pair_set_is_served_with_text_pair(tiny_artifacts, tmp_path) -> None:
    artifacts = tiny_artifacts("bert")
    result = subprocess.run(
        [str(ROOT / "bench" / "run.sh"), "--quick", "--seconds", QUICK_SECONDS, "--sets", "pairs", "--no-hf",
         "--concurrency", "16",
         "--hf-dir", str(artifacts.hf_dir), "--onnx-dir", str(artifacts.out_dir), "--work-dir", str(tmp_path),
         "--json", str(tmp_path / "results.json")], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    rows = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))["rows"]
    assert {(row["set"], row["engine"], row["concurrency"]) for row in rows} == {
        ("pairs", "raw ORT", 1), ("pairs", "raw ORT no-spin", 1), ("pairs", "http", 16), ("pairs", "grpc", 16)}
    for row in rows:
        assert row["texts"] > 0 and row["texts_per_s"] > 0 and row["label_mismatches"] == 0, row
    assert re.search(r"- +fp32 pairs http c16 \[default\]: [\d.]+ texts/s = [\d.]+x raw ORT", result.stdout)
    repository = tmp_path / "repos" / "fp32-default-pairs" / "bench_model" / "context" / "model_repository"
    assert 'name: "text_pair"' in (repository / "bench_model" / "config.pbtxt").read_text()


def test_help_documents_the_options() -> None:
    result = subprocess.run([str(ROOT / "bench" / "run.sh"), "--help"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0
    for option in ("--quick", "--quantized", "--config", "--concurrency", "--protocols", "--sets", "pairs"):
        assert option in result.stdout


# ------------------------------------------------------------------------------------------------ sizing mode

SIZING_COLUMNS = ["size", "cores", "config", "engine", "conc", "texts/s", "x raw Nx1", "p50 ms", "vs raw 1xN",
                  "p99 ms", "server CPU", "load CPU", "load on"]


@pytest.fixture(scope="module")
def sizing_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, "Path"]:
    """The sizing mode's quick run: the tiny shape built and converted here, served on 1 core."""
    work = tmp_path_factory.mktemp("sizing")
    result = subprocess.run(
        [str(ROOT / "bench" / "run.sh"), "--sizes", "tiny", "--cores", "1", "--quick", "--concurrency", "1,16",
         "--work-dir", str(work), "--json", str(work / "results.json")],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result, json.loads((work / "results.json").read_text(encoding="utf-8")), work


def test_sizing_mode_table(sizing_run) -> None:
    import os

    result, results, _ = sizing_run
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["size", "cores"])
    assert re.split(r"\s{2,}", lines[start].strip()) == SIZING_COLUMNS
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[start + 2:] if line.startswith("tiny")]
    keys = {(row[0], row[1], row[3], row[4]) for row in rows}
    expected = {("tiny", "1", "raw Nx1", "1"), ("tiny", "1", "raw 1xN", "1")} | {
        ("tiny", "1", protocol, conc) for protocol in ("http", "grpc") for conc in ("1", "16")}
    assert keys == expected, keys
    assert all(len(row) == len(SIZING_COLUMNS) for row in rows), rows
    by_engine = {(row[3], row[4]): row for row in rows}
    assert by_engine[("raw Nx1", "1")][6] == "1.00" and by_engine[("raw 1xN", "1")][8] == "+0.00"
    cpus = sorted(os.sched_getaffinity(0))
    load_on = "shared" if len(cpus) == 1 else "cpus " + ",".join(str(c) for c in cpus[1:])
    assert {row[12] for row in rows if row[3] in ("http", "grpc")} == {load_on}
    # The server's whole tree (gateway, tritonserver, the three models' stubs) ran on the first CPU only.
    confined = re.search(r"confined: tiny, 1 core\(s\), config default: (\d+) server processes, all on CPUs \[(\d+)\]",
                         result.stdout)
    assert confined and int(confined.group(1)) >= 5 and int(confined.group(2)) == cpus[0], result.stdout
    assert "served labels that differ from raw ORT's: none" in result.stdout
    assert not re.search(r"\b(MET|MISSED)\b", result.stdout), "a quick run judged a goal"
    assert re.search(r"-      tiny 1 core\(s\) http c16 \[default\]: [\d.]+ texts/s = [\d.]+x raw 1x1", result.stdout)
    for record in results["rows"]:
        assert record["texts"] > 0 and record["texts_per_s"] > 0 and record["p99_ms"] >= record["p50_ms"] > 0
        assert record["load_cpu"] > 0, record
        if record["engine"] in ("http", "grpc"):
            assert record["server_cpu"] > 0 and record["label_mismatches"] == 0, record


def test_sizing_builds_the_shape_and_converts_it_with_parity(sizing_run) -> None:
    from bench.shapes import SIZES

    _, _, work = sizing_run
    config = json.loads((work / "sizes" / "tiny" / "hf" / "config.json").read_text(encoding="utf-8"))
    shape = SIZES["tiny"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["intermediate_size"]) == (shape.hidden, shape.layers, shape.heads, shape.intermediate)
    report = json.loads((work / "sizes" / "tiny" / "onnx" / "conversion_report.json").read_text(encoding="utf-8"))
    assert report["architecture"] == "BertForSequenceClassification" and report["max_sequence_length"] == 256


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "huge"], "--sizes: unknown size(s) ['huge']; choose from tiny,mini,base"),
    (["--cores", "0"], "--cores: [0] not between 1 and the"),
    (["--cores", "4096"], "--cores: [4096] not between 1 and the"),
    (["--cores", "x"], "--cores: invalid"),
    (["--sizes", "tiny", "--sets", "pairs"], "--sets pairs is not measured in the sizing mode"),
    (["--sizes", "tiny", "--load-processes", "-1"], "--load-processes: give 0"),
])
def test_sizing_mode_refuses_bad_options(argv, message, tmp_path) -> None:
    result = run_bench_tool("bench.py", argv, tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr
    assert not list(tmp_path.iterdir()), "a refused run built something"


def test_pinning_refuses_cpus_this_process_may_not_use() -> None:
    import os

    from bench.local_server import ServerError, pin_command

    cpus = sorted(os.sched_getaffinity(0))
    assert pin_command(cpus[:1]) == ["taskset", "-c", str(cpus[0])]
    for bad in ([], [max(cpus) + 1000]):
        with pytest.raises(ServerError, match="cannot confine the server to CPUs"):
            pin_command(bad)


def test_raw_pool_processes_run_on_their_cpus(tiny_artifacts) -> None:
    """Pool.raw: N processes side by side, each confined, each running its share of the texts."""
    import os

    from bench.pool import Pool
    from bench.texts import short_texts

    cpu = sorted(os.sched_getaffinity(0))[-1]
    with Pool.raw(tiny_artifacts("bert").out_dir, short_texts(8), processes=2, threads=1, cpus=[cpu]) as pool:
        assert [os.sched_getaffinity(process.pid) for process in pool.processes] == [{cpu}, {cpu}]
        measurement = pool.run(10)
    assert len(measurement.latencies) == 10 and measurement.wall > 0 and measurement.client_cpu_seconds > 0
    assert len({label for _, label in measurement.labels}) >= 1


# ------------------------------------------------------------------------------------------------ front ceiling

def test_front_ceiling_by_worker_count(tmp_path) -> None:
    result = subprocess.run(
        [str(ROOT / "bench" / "run.sh"), "front-ceiling", "--quick", "--workers", "1,2", "--work-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("workers"))
    rows = {(row[0], row[3]): row for row in (re.split(r"\s{2,}", line.strip()) for line in lines[start + 2:])}
    assert set(rows) == {("1", "gateway"), ("1", "direct"), ("2", "gateway"), ("2", "direct")}, rows
    for (workers, path), row in rows.items():
        assert float(row[4]) > 0 and float(row[6]) >= float(row[5]) > 0, row  # requests/s, p99 >= p50
        if path == "gateway":
            assert float(row[8]) > 0, row  # the gateway's CPU per request
    # The worker count reached the gateway: more gateway processes in the tree with 2 workers than with 1.
    assert int(rows[("2", "gateway")][1]) > int(rows[("1", "gateway")][1]) >= 1, rows
    assert (tmp_path / "repository" / "echo" / "1" / "model.py").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0"], "expected positive integers"),
    (["--workers", "two"], "expected positive integers"),
    (["--workers-env", "1BAD;rm"], "expected an environment variable name"),
    (["--cores", "4096"], "--cores 4096: give 1 to"),
    (["--protocols", "udp"], "--protocols takes http,grpc"),
])
def test_front_ceiling_refuses_bad_options(argv, message, tmp_path) -> None:
    result = run_bench_tool("front_ceiling.py", argv, tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not list(tmp_path.iterdir())


def test_goals_are_not_judged_when_raw_ort_did_not_get_its_cores(sizing_run) -> None:
    """On a busy machine raw Nx1 gets less than its N cores and every ratio is noise: the sizing mode then judges
    no goal. With the real records of the run above, raw Nx1's CPU share decides."""
    from bench.matrix import BUSY_SHARE, busy_because, goal_lines

    _, results, _ = sizing_run
    records = results["rows"]

    def with_raw_share(share: float) -> list[dict]:
        return [dict(r, load_cpu=share * r["cores"]) if r["engine"] == "raw Nx1" else r for r in records]

    reason = busy_because(with_raw_share(BUSY_SHARE / 2))
    assert reason and "the machine is busy: raw Nx1 got fewer than 80% of its N cores (tiny 1 core(s): " in reason
    assert busy_because(with_raw_share(1.0)) is None
    judged = goal_lines(with_raw_share(1.0), judged=True)
    assert judged and all(re.match(r"(MET   |MISSED) tiny 1 core\(s\) (http|grpc) c(1 |16)", line) for line in judged)
