"""Docker for the container test: an engine (started by docker/engine.sh when none answers), the stand-in
Triton base (docker/standin/build_standin.sh), a wheelhouse for offline builds, and a running container."""
from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from utils.check_wheelhouse import Target, download_arguments  # noqa: E402
ENGINE_SCRIPT = ROOT / "docker" / "engine.sh"
STANDIN_SCRIPT = ROOT / "docker" / "standin" / "build_standin.sh"

log = logging.getLogger(__name__)


def docker(*args: str, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def engine_answers() -> bool:
    try:
        return docker("info", timeout=30, check=False).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


@dataclass
class Engine:
    """A Docker engine that answers; `started` when this test session started it (and must stop it)."""

    started: bool = False

    @classmethod
    def ensure(cls) -> "Engine":
        """An answering engine, started with docker/engine.sh when needed. Raises EngineUnavailable."""
        if engine_answers():
            return cls(started=False)
        result = subprocess.run([str(ENGINE_SCRIPT), "start"], capture_output=True, text=True, timeout=600)
        if result.returncode != 0 or not engine_answers():
            raise EngineUnavailable(f"docker/engine.sh start failed ({result.returncode}): "
                                    f"{(result.stderr or result.stdout).strip()[-1500:]}")
        return cls(started=result.stdout.strip().endswith("started"))

    def stop(self) -> None:
        if self.started:
            subprocess.run([str(ENGINE_SCRIPT), "stop"], capture_output=True, text=True, timeout=120)


class EngineUnavailable(RuntimeError):
    """No Docker engine answers and none could be started here."""


def build_standin() -> str:
    """The stand-in base image's name (standin:<hash>), built when not cached."""
    result = subprocess.run([str(STANDIN_SCRIPT)], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"build_standin.sh failed:\n{result.stderr[-4000:]}"
    return result.stdout.strip().splitlines()[-1]


def image_python_version(image: str) -> str:
    """major.minor of the python3 in an image."""
    out = docker("run", "--rm", "--entrypoint", "python3", image, "-c",
                 "import sys; print('%d.%d' % sys.version_info[:2])").stdout
    return out.strip()


def standin_python() -> Target:
    """The stand-in's Python and newest manylinux platform, as docker/standin/build_standin.sh states them."""
    result = subprocess.run([str(STANDIN_SCRIPT), "--print-python"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    python, platform = result.stdout.split()
    return Target(python, platform)


def download_wheelhouse(requirements: Path, dest: Path, python_version: str) -> Path:
    """pip download the requirements' wheels into dest for the stand-in, whose Python (`python_version`, read from
    the image) must be the one build_standin.sh states: the command docs/image.md shows for it
    (utils/check_wheelhouse.py makes it, and make_triton_image.sh --standin checks the wheels against it)."""
    target = standin_python()
    assert target.python == python_version, f"the stand-in runs Python {python_version}, its script says {target}"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--implementation", "cp",
         *download_arguments(target, requirements, dest)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"pip download failed:\n{result.stderr[-4000:]}"
    return dest


def readme_docker_run(readme: Path, image_name: str) -> list[str]:
    """The README's `docker run ... IMAGE` command line for image_name (any tag), split into words."""
    for line in readme.read_text(encoding="utf-8").splitlines():
        words = shlex.split(line.strip()) if line.strip().startswith("docker run") else []
        if words and words[-1].split(":")[0] == image_name:
            return words
    raise AssertionError(f"README.md has no 'docker run ... {image_name}:TAG' line")


def readme_curl(readme: Path = ROOT / "README.md") -> str:
    """The README's curl inference request (the first `curl ... /infer` line)."""
    lines = [line.strip() for line in readme.read_text(encoding="utf-8").splitlines()]
    return next(line for line in lines if line.startswith("curl") and "/infer" in line)


def localize_run_command(words: list[str], image: str, name: str, host_ports: dict[int, int]) -> list[str]:
    """The README's docker run, detached and named, its -pHOST:CONTAINER on 127.0.0.1:<free port>."""
    assert words[:2] == ["docker", "run"], words
    options: list[str] = []
    ports: list[str] = []
    args = iter(words[2:-1])
    for word in args:
        if word in ("-p", "--publish"):
            ports.append(next(args))
        elif word.startswith("--publish="):
            ports.append(word.split("=", 1)[1])
        elif word.startswith("-p"):
            ports.append(word[2:])
        elif word not in ("--rm", "-d", "--detach", "-it", "-i", "-t"):
            options.append(word)
    mapped = []
    for port in ports:
        container_port = int(port.rsplit(":", 1)[1])
        assert container_port in host_ports, f"README publishes unexpected port {port}"
        mapped += ["-p", f"127.0.0.1:{host_ports[container_port]}:{container_port}"]
    assert sorted(int(p.rsplit(":", 1)[1]) for p in ports) == sorted(host_ports), \
        f"README's docker run publishes {ports}, expected {sorted(host_ports)}"
    return ["docker", "run", "-d", "--name", name, "--label", "tritoned-test=1", *options, *mapped, image]


@dataclass
class Container:
    """A detached container started from a docker run command line."""

    command: list[str]
    name: str
    host_ports: dict[int, int] = field(default_factory=dict)
    id: str = ""

    def start(self) -> "Container":
        self.id = subprocess.run(self.command, capture_output=True, text=True, timeout=120,
                                 check=True).stdout.strip()
        return self

    def url(self, container_port: int) -> str:
        return f"127.0.0.1:{self.host_ports[container_port]}"

    def state(self) -> dict:
        return json.loads(docker("inspect", "-f", "{{json .State}}", self.name).stdout)

    def logs(self) -> str:
        result = docker("logs", "--tail", "80", self.name, check=False)
        return (result.stdout + result.stderr)[-8000:]

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.url(8000)}/v2/health/ready"
        while time.monotonic() < deadline:
            if not self.state().get("Running"):
                raise RuntimeError(f"container exited: {self.state()}\n{self.logs()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"not ready after {timeout}s:\n{self.logs()}")

    def wait_health(self, expected: str = "healthy", timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = (self.state().get("Health") or {}).get("Status", "")
            if status == expected or status == "unhealthy":
                break
            time.sleep(1)
        return status

    def exec(self, *command: str, user: str | None = None) -> subprocess.CompletedProcess:
        return docker("exec", *(["-u", user] if user else []), self.name, *command, check=False)

    def remove(self) -> None:
        docker("rm", "-f", self.name, check=False)


def scan_image(image: str, markers: list[bytes]) -> dict[bytes, bool]:
    """Stream `docker save IMAGE` (every layer tar uncompressed, including files deleted by later layers,
    plus the image config with its history) and report which byte strings occur anywhere in it."""
    found = {marker: False for marker in markers}
    overlap = max(len(m) for m in markers)
    tail = b""
    with subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(1 << 22):
            window = tail + chunk
            for marker in markers:
                found[marker] = found[marker] or marker in window
            tail = window[-overlap:]
        assert proc.wait() == 0, f"docker save {image} failed"
    return found
