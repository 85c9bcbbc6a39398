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


def test_hadolint_dockerfile() -> None:
    result = subprocess.run([tool("hadolint"), "Dockerfile"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
