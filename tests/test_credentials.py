"""No credential from the build machine ends up in the Docker build context: make_triton_image.sh runs with
storage and cloud credentials in its environment and in the usual credential files of a fake home, and
every byte of everything it writes (file contents and names, binary files included) is searched for them.
(tests/test_container.py searches the built image the same way.)"""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from conftest import Artifacts, make_image

# Environment variables the converter's storages and the usual cloud tools read.
SECRET_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY",
                    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "TRITONED_ADMIN_KEY")
# Credential files under $HOME that a tool could pick up on its own.
SECRET_FILES = (".cache/huggingface/token", ".huggingface/token", "clearml.conf", ".clearml.conf",
                ".aws/credentials", ".netrc", ".docker/config.json")


def marker(name: str) -> str:
    return f"tritoned-secret-{name.replace('/', '-').strip('.').lower()}-{uuid.uuid4().hex}"


def files_holding(root: Path, needles: list[bytes]) -> dict[bytes, list[str]]:
    """For each needle, the paths under root (relative) whose content or own path contains it."""
    found: dict[bytes, list[str]] = {needle: [] for needle in needles}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        for needle in needles:
            if needle in content or needle in relative.encode():
                found[needle].append(relative)
    return found


@pytest.mark.parametrize("wheelhouse", [False, True], ids=["pypi", "wheelhouse"])
def test_no_credentials_in_the_build_context(tiny_artifacts, tmp_path: Path, wheelhouse: bool) -> None:
    artifacts: Artifacts = tiny_artifacts("bert")
    home = tmp_path / "home"
    env = {name: marker(name) for name in SECRET_VARIABLES}
    env["HOME"] = str(home)
    files = {name: marker(name) for name in SECRET_FILES}
    for name, value in files.items():
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text(f"{value}\n")
    extra = ["--no-build"]
    if wheelhouse:  # a wheelhouse folder that also holds a stray credential file: only *.whl may be copied
        wheels = tmp_path / "wheels"
        wheels.mkdir()
        (wheels / "numpy-0-py3-none-any.whl").write_bytes(b"PK not a real wheel")
        files["wheels/.netrc"] = marker("wheelhouse-netrc")
        (wheels / ".netrc").write_text(files["wheels/.netrc"])
        # --base-image: a base whose Python the script does not know, so the (fake) wheels are not checked for it
        extra += ["--wheelhouse", str(wheels), "--base-image", "example.org/triton-base:1"]

    build = tmp_path / "build"
    result = make_image(artifacts, build, *extra, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    context = build / "ensemble_model" / "context"
    assert (context / "Dockerfile").is_file() and (context / "serve_image.sh").is_file()

    control = artifacts.id2label.read_bytes().strip()  # copied verbatim into the repository
    secrets = {**{f"${k}": v for k, v in env.items() if k != "HOME"}, **{f"~/{k}": v for k, v in files.items()}}
    found = files_holding(build, [control, *(value.encode() for value in secrets.values())])
    assert found[control], "the search found not even id2label.json's labels: it is broken"
    leaked = {name: found[value.encode()] for name, value in secrets.items() if found[value.encode()]}
    assert not leaked, f"credentials found in the build context: {leaked}"
    assert not [name for name, value in secrets.items() if value in result.stdout + result.stderr], \
        "make_triton_image.sh printed a credential"
