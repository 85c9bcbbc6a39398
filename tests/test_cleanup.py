"""cleanup.sh puts a checkout back as it was: after assembling, `git status` is clean again."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, Artifacts


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def checkout_copy(tmp_path: Path) -> Path:
    """A fresh git repository holding the project's files as they are now (tracked or to be)."""
    files = git(ROOT, "ls-files", "--cached", "--others", "--exclude-standard", "-z").split("\0")
    repo = tmp_path / "checkout"
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            target = repo / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            target.chmod(source.stat().st_mode)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "snapshot")
    return repo


def test_cleanup_restores_a_clean_checkout_and_is_idempotent(tiny_artifacts, tmp_path: Path) -> None:
    artifacts: Artifacts = tiny_artifacts("bert")
    repo = checkout_copy(tmp_path)
    env = {**os.environ, "TRITONED_PYTHON": sys.executable}
    env.pop("TRITONED_BUILD_DIR", None)
    assembled = subprocess.run(
        [str(repo / "make_triton_image.sh"), "--no-build", str(artifacts.model), str(artifacts.tokenizer),
         str(artifacts.id2label)], cwd=repo, env=env, capture_output=True, text=True)
    assert assembled.returncode == 0, assembled.stderr
    assert (repo / "build" / "ensemble_model").is_dir()
    assert git(repo, "status", "--porcelain", "--ignored") != ""

    for _ in range(2):
        result = subprocess.run([str(repo / "cleanup.sh")], cwd=repo, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert git(repo, "status", "--porcelain", "--ignored") == ""
    assert not (repo / "build").exists()
