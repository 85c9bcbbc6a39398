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


def test_cleanup_names_the_images_it_built_and_removes_them_with_images(tiny_artifacts, tmp_path: Path) -> None:
    """The image make_triton_image.sh built (from a copy of the checkout, on the stand-in base, offline from a
    wheelhouse) outlives ./cleanup.sh, which names it; ./cleanup.sh --images removes it. Other images stay."""
    import uuid

    import pytest

    from docker_helpers import (Engine, EngineUnavailable, build_standin, docker, download_wheelhouse,
                                image_python_version)

    try:
        engine = Engine.ensure()
    except EngineUnavailable as error:
        pytest.skip(f"no Docker engine can run here: {error}")
    try:
        standin = build_standin()
        wheels = download_wheelhouse(ROOT / "requirements-serving.txt", tmp_path / "wheels",
                                     image_python_version(standin))
        artifacts: Artifacts = tiny_artifacts("bert")
        repo = checkout_copy(tmp_path)
        env = {**os.environ, "TRITONED_PYTHON": sys.executable}
        env.pop("TRITONED_BUILD_DIR", None)
        image = f"cleanuptest:{uuid.uuid4().hex[:10]}"
        built = subprocess.run(
            [str(repo / "make_triton_image.sh"), "--standin", "--wheelhouse", str(wheels), str(artifacts.model),
             str(artifacts.tokenizer), str(artifacts.id2label), *image.split(":")], cwd=repo, env=env,
            capture_output=True, text=True, timeout=1200)
        assert built.returncode == 0, built.stderr[-4000:]
        try:
            kept = subprocess.run([str(repo / "cleanup.sh")], cwd=repo, capture_output=True, text=True, timeout=120)
            assert kept.returncode == 0, kept.stderr
            assert f"kept the images ./make_triton_image.sh built: {image} (" in kept.stderr, kept.stderr
            assert "./cleanup.sh --images" in kept.stderr and not (repo / "build").exists()
            assert docker("image", "inspect", image, check=False).returncode == 0
            removed = subprocess.run([str(repo / "cleanup.sh"), "--images"], cwd=repo, capture_output=True,
                                     text=True, timeout=120)
            assert removed.returncode == 0, removed.stderr
            assert f"removed image {image}" in removed.stderr, removed.stderr
            assert docker("image", "inspect", image, check=False).returncode != 0, "the image is still there"
            assert docker("image", "inspect", standin, check=False).returncode == 0, "the stand-in base was removed"
            again = subprocess.run([str(repo / "cleanup.sh"), "--images"], cwd=repo, capture_output=True,
                                   text=True, timeout=120)
            assert again.returncode == 0 and "image" not in again.stderr, again.stderr
        finally:
            docker("rmi", "-f", image, check=False)
    finally:
        engine.stop()
