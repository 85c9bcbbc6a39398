"""Static checks: shellcheck on every shell script, hadolint on the Dockerfile."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT


def shell_scripts() -> list[Path]:
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    scripts = []
    for name in tracked:
        path = ROOT / name
        if path.is_file() and (name.endswith(".sh") or path.read_bytes()[:32].startswith(b"#!/usr/bin/env bash")):
            scripts.append(path)
    return scripts


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not installed: run ./setup_venv.sh (it comes from requirements-dev.txt)"
    return path


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck(script: Path) -> None:
    result = subprocess.run([tool("shellcheck"), "-x", str(script)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_have_help() -> None:
    for script in shell_scripts():
        if script.parent != ROOT:
            continue
        result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and "Usage:" in result.stdout, script


# The scripts whose --help documents the exit statuses (utils/cli.sh: 0 done, 1 a failed step, 2 a usage or input
# error), and those that parse their own options: an unknown one is a usage error, status 2, before anything runs.
DOCUMENTED = ["make_triton_image.sh", "serve_local.sh", "cleanup.sh", "process_template.sh", "setup_venv.sh",
              "quickstart.sh", "run_tests.sh", "bench/run.sh", "docker/engine.sh", "docker/standin/build_standin.sh",
              "docker/serve_image.sh", "docker/healthcheck"]
PARSING = ["make_triton_image.sh", "serve_local.sh", "cleanup.sh", "docker/engine.sh",
           "docker/standin/build_standin.sh"]


@pytest.mark.parametrize("script", DOCUMENTED)
def test_help_documents_the_exit_status(script: str) -> None:
    result = subprocess.run([str(ROOT / script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Exit status:" in result.stdout, result


@pytest.mark.parametrize("script", PARSING)
def test_an_unknown_option_is_a_usage_error(script: str, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "TRITONED_BUILD_DIR": str(tmp_path), "TRITONED_ENGINE_STATE": str(tmp_path),
           "TRITONED_STANDIN_CACHE": str(tmp_path)}
    result = subprocess.run([str(ROOT / script), "--no-such-option"], capture_output=True, text=True, timeout=60,
                            env=env)
    assert result.returncode == 2, result
    assert f"{Path(script).name}: " in result.stderr and "--no-such-option" in result.stderr, result
    assert list(tmp_path.iterdir()) == [], "a usage error left files behind"


def test_hadolint_dockerfile() -> None:
    result = subprocess.run([tool("hadolint"), "Dockerfile"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
