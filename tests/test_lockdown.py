"""The lock-down shared by serve_local.sh and the image's entrypoint (gateway/lockdown.py): one list of
restricted APIs, an admin key that opens them locally too, and unfit keys refused before anything starts.
(tests/test_container.py checks the same in the image; tests/test_serve_local.py the closed default.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import ROOT, http, make_image
from local_triton import LocalTriton

ADMIN_HEADER = "tritoned-admin-key"
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"
API_LIST = "model-repository,shared-memory,trace,logging"



def test_the_restricted_api_list_lives_in_one_place() -> None:
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    code = [name for name in tracked if (ROOT / name).is_file() and not name.startswith("tests/")
            and not name.endswith(".md")]  # documentation may quote the list
    holders = [name for name in code if API_LIST in (ROOT / name).read_text(errors="replace")]
    assert holders == ["gateway/lockdown.py"], holders
    for script in ("serve_local.sh", "docker/serve_image.sh"):
        assert "-m gateway" in (ROOT / script).read_text(), f"{script} does not run tritonserver behind the gateway"


def test_serve_image_help() -> None:
    result = subprocess.run([str(ROOT / "docker" / "serve_image.sh"), "--help"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0 and "Usage:" in result.stdout, result
    assert API_LIST in result.stdout and GRPC_ADMIN_HEADER in result.stdout, result.stdout


@pytest.mark.parametrize("key", ["short", "sixteen chars but spaces", "ключ-не-ascii-символы-0123456789"])
@pytest.mark.parametrize("script", ["serve_local.sh", "docker/serve_image.sh"])
def test_unfit_admin_key_is_refused_before_starting(script: str, key: str, tmp_path: Path) -> None:
    env = {**os.environ, "TRITONED_ADMIN_KEY": key, "TRITONED_PYTHON": sys.executable,
           "TRITONED_BUILD_DIR": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # A directory with no models: should the key be accepted by mistake, the server would not come up anyway.
    result = subprocess.run([str(ROOT / script), "--", "--help"] if script.startswith("docker") else
                            [str(ROOT / script), str(ROOT / "utils"), "--http-port", "1"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "TRITONED_ADMIN_KEY must be at least 16 characters" in result.stderr, result.stderr


def test_local_admin_key_opens_the_restricted_apis(tiny_artifacts, tmp_path: Path) -> None:
    build = tmp_path / "build"
    assert make_image(tiny_artifacts("bert"), build, "--no-build").returncode == 0
    key = f"{uuid.uuid4().hex}+/="  # base64 characters work too
    server = LocalTriton(repository=build / "ensemble_model" / "context" / "model_repository",
                         log=tmp_path / "server.log", env={"TRITONED_ADMIN_KEY": key, "TRITONED_BUILD_DIR": str(build),
                                                           "TRITONED_PYTHON": sys.executable})
    try:
        server.start()
        assert http(server.http_url, "GET", "/v2/logging")[0] == 403
        assert http(server.http_url, "GET", "/v2/logging", headers={ADMIN_HEADER: key + "x"})[0] == 403
        status, text = http(server.http_url, "GET", "/v2/logging", headers={ADMIN_HEADER: key})
        assert status == 200 and "log_verbose_level" in json.loads(text), (status, text)
        status, text = http(server.http_url, "POST", "/v2/repository/index", {}, headers={ADMIN_HEADER: key})
        assert status == 200 and "ensemble_model" in text, (status, text)
        assert http(server.http_url, "GET", "/v2/models/stats")[0] == 200  # statistics stay open

        client = grpcclient.InferenceServerClient(server.grpc_url)
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_log_settings()
        assert "log_verbose_level" in client.get_log_settings(headers={GRPC_ADMIN_HEADER: key}, as_json=True)["settings"]
        assert key not in server.log_text(), "the admin key is printed in the server's output"
    finally:
        server.stop()
