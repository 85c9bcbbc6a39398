"""Smoke test of bench/process_cost.py on a tiny BERT: two real servers (model metrics on and off), one short round;
the table has every process of the ensemble with positive CPU per text, and the differences add up."""
from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT

PROCESSES = ("model_onnx", "post_processing", "text_preprocessing", "tritonserver")


def test_table_per_process(tiny_artifacts, tmp_path) -> None:
    artifacts = tiny_artifacts("bert")
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "process_cost.py"), "--onnx-dir", str(artifacts.out_dir),
         "--config", "on=", "--config", "off=--no-model-metrics", "--sets", "short", "--rounds", "1",
         "--seconds", "0.5", "--concurrency", "4", "--work-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    lines = result.stdout.strip().splitlines()
    assert re.match(r"server CPU ms per text, short texts \(on: \d+ texts, off: \d+ texts\)", lines[0]), lines
    assert lines[1].split() == ["process", "on", "off", "vs"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert set(PROCESSES) <= set(rows) and "total" in rows, rows
    for process in PROCESSES:
        on, off, difference = (float(cell) for cell in rows[process])
        assert on > 0 and off > 0, (process, rows)
        assert abs(off - on - difference) < 0.0015, (process, rows)
    parts = sum(float(cells[0]) for name, cells in rows.items() if name != "total")
    assert abs(float(rows["total"][0]) - parts) < 0.01, rows
