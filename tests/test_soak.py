"""bench/soak.py, short: the tiny BERT served through the real ensemble on the local Triton for ~15 s at
concurrency 4; every answer checked against ONNX Runtime in-process, no error, the report complete."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

SOAK = ROOT / "bench" / "soak.py"


def run_soak(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SOAK), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def test_help() -> None:
    result = run_soak("--help", timeout=60)
    assert result.returncode == 0 and "--duration" in result.stdout and "--model-dir" in result.stdout, result


def test_missing_model_dir_is_refused(tmp_path: Path) -> None:
    result = run_soak("--model-dir", str(tmp_path / "nothing"), "--build-dir", str(tmp_path / "b"), timeout=60)
    assert result.returncode == 2 and "model.onnx not found" in result.stderr, result


def test_short_soak_serves_every_request_right(tiny_artifacts, tmp_path: Path) -> None:
    artifacts = tiny_artifacts("bert")
    report = tmp_path / "soak.json"
    result = run_soak("--model-dir", str(artifacts.out_dir), "--build-dir", str(tmp_path / "build"),
                      "--duration", "9", "--warmup", "3", "--window", "3", "--concurrency", "4",
                      "--long-texts", "8", "--json", str(report))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]

    header = re.search(r"texts: (\d+) short, (\d+) long .*?(\d+) near ties left out", output)
    assert header, output
    assert int(header.group(1)) >= 50 and int(header.group(2)) >= 4, "too few texts survived the near-tie filter"
    assert re.search(r"^warm-up: \d+ requests, 0 errors; server memory [\d.]+ MiB \(tritonserver\[\d+\]", output, re.M)
    windows = re.findall(r"^\s+(\d+)\s+\d+-\d+\s+(\d+)\s+(\d+)\s+[\d.]+\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$",
                         output, re.M)
    assert [int(w[0]) for w in windows] == [1, 2, 3], output
    assert all(int(w[1]) > 0 and w[2] == "0" for w in windows), windows
    assert all(0 < float(w[3]) <= float(w[4]) for w in windows), "p50 must be positive and <= p99"
    memory = re.search(r"^memory: start ([\d.]+) MiB \(after warm-up\), end ([\d.]+) MiB .*growth ([-+][\d.]+)%",
                       output, re.M)
    assert memory and float(memory.group(1)) > 50, output  # tritonserver plus three Python stubs
    assert re.search(r"^total: \d+ requests served, 0 errors, p50 [\d.]+ ms, p99 [\d.]+ ms$", output, re.M), output
    assert output.rstrip().endswith("result: PASS"), output[-2000:]

    summary = json.loads(report.read_text())
    assert summary["errors"] == 0 and summary["passed"] is True
    assert summary["requests"] >= sum(int(w[1]) for w in windows) > 0
    assert summary["rss_growth_pct"] < 10


def test_a_wrong_answer_fails_the_soak(tiny_artifacts, tmp_path: Path) -> None:
    """The checks bite: a tolerance no float answer meets turns every answer into an error, exit 1."""
    artifacts = tiny_artifacts("bert")
    result = run_soak("--model-dir", str(artifacts.out_dir), "--build-dir", str(tmp_path / "build"),
                      "--duration", "2", "--warmup", "0", "--window", "2", "--concurrency", "2",
                      "--long-texts", "2", "--tolerance", "1e-30", "--min-margin", "0")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-4000:]
    assert re.search(r"^total: \d+ requests served, [1-9]\d* errors", output, re.M), output
    assert "probabilities differ from the reference" in output and "result: FAIL" in output, output
