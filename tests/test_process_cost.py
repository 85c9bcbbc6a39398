"""Smoke test of bench/process_cost.py on a tiny BERT: two real servers (model metrics on and off) and the floor (the
same repository with stand-in models, --floor) over HTTP and gRPC, one short round, against raw ONNX Runtime; the table
has every process of the server with positive CPU per text, the parts add up to the served total, "outside the model"
is the served total minus raw, and the floor's model costs a fraction of the real one's."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT, run_bench_tool

sys.path.insert(0, str(ROOT))  # the bench package

ROLES = ("gateway", "tritonserver", "text_preprocessing", "model_onnx", "post_processing")
COLUMNS = ["model", "protocol", "config", "raw", "served", "outside the model", "raw Nx1", "outside vs Nx1", *ROLES,
           "other", "served texts/s", "raw Nx1 texts/s", "served/raw", "p50 ms"]


def test_table_per_process(tiny_artifacts, tmp_path) -> None:
    artifacts = tiny_artifacts("bert")
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "process_cost.py"), "--onnx-dir", str(artifacts.out_dir),
         "--config", "on=", "--config", "off=--no-model-metrics", "--protocols", "http,grpc", "--quick", "--floor",
         "--concurrency", "4", "--work-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    lines = result.stdout.strip().splitlines()
    assert re.match(r"CPU ms per text by process, short texts, one text per request, 4 in flight, 1 interleaved",
                    lines[0]), lines
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["model"])
    assert re.split(r"\s{2,}", lines[start].strip()) == COLUMNS
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[start + 2:]]
    assert {(row[1], row[2]) for row in rows} == {(p, c) for p in ("http", "grpc") for c in ("on", "off", "floor")}, \
        rows
    by_config = {(row[1], row[2]): dict(zip(COLUMNS, row)) for row in rows}
    for protocol in ("http", "grpc"):
        floor, served = by_config[(protocol, "floor")], by_config[(protocol, "on")]
        assert [floor[column] for column in ("raw", "raw Nx1", "outside vs Nx1", "raw Nx1 texts/s", "served/raw")] \
            == ["-"] * 5, floor
        assert float(floor["outside the model"]) == float(floor["served"]) > 0, floor
        assert float(floor["model_onnx"]) < float(served["model_onnx"]) / 3, (floor, served)  # stand-ins do no work
        for role in ROLES:
            assert float(floor[role]) > 0, (role, floor)
    for row in rows:
        if row[2] == "floor":
            continue
        figures = dict(zip(COLUMNS, row))
        raw, served, outside = float(figures["raw"]), float(figures["served"]), float(figures["outside the model"])
        assert raw > 0 and served > 0, row
        assert abs(served - raw - outside) < 0.015, row
        best = float(figures["raw Nx1"])
        assert best > 0 and abs(served - best - float(figures["outside vs Nx1"])) < 0.015, row
        for role in ROLES:
            assert float(figures[role]) > 0, (role, row)
        parts = sum(float(figures[role]) for role in (*ROLES, "other"))
        assert abs(parts - served) < 0.02, row
        assert float(figures["served texts/s"]) > 0 and float(figures["raw Nx1 texts/s"]) > 0
        assert float(figures["served/raw"]) > 0
    for row in rows:
        assert float(dict(zip(COLUMNS, row))["p50 ms"]) > 0, row


def test_roles_by_command_line_and_process_tree() -> None:
    """Roles from real command lines of the server's processes; a gateway worker counts as the gateway whatever
    its own command line."""
    from bench.process_cost import own_role

    assert own_role("/v/bin/python -m gateway --host 127.0.0.1 -- /p/bin/tritonserver --model-repository=/r") \
        == "gateway"
    assert own_role("/v/bin/python -m gateway.worker --index 1 --control 9") == "gateway"
    assert own_role("/p/tritonserver/bin/tritonserver --disable-auto-complete-config") == "tritonserver"
    assert own_role("/b/python/triton_python_backend_stub /r/model_onnx/1/model.onnx tritoned_shm_1 1048576 "
                    "1048576 77 /b/python 336 model_onnx_0_1 DEFAULT") == "model_onnx"
    assert own_role("/b/python/triton_python_backend_stub /tmp/sized/text_preprocessing/1/model.py shm") \
        == "text_preprocessing"
    assert own_role("bash ./serve_local.sh repo") is None
    assert own_role("/v/bin/python -c from multiprocessing.spawn import spawn_main") is None  # takes its parent's


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "huge"], "--sizes takes tiny,mini,base"),
    (["--protocols", "udp"], "--protocols takes http,grpc"),
    (["--sets", "pairs"], "--sets takes short,long"),
    (["--config", "bad name=--x"], "expected NAME=OPTIONS"),
    (["--concurrency", "0", "--sizes", "tiny"], "must be positive"),
    (["--config", "floor=", "--floor", "--sizes", "tiny"], "the name 'floor' is the stand-in server of --floor"),
])
def test_refuses_bad_options(argv, message, tmp_path) -> None:
    result = run_bench_tool("process_cost.py", argv, tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not list(tmp_path.iterdir())
