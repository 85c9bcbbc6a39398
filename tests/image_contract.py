"""What the image declares about itself, read from the Dockerfile and the entrypoint (docker/serve_image.sh),
so that tests compare the Helm chart with the image instead of with a second hand-written copy."""
from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
# docker's duration syntax in HEALTHCHECK options
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$")


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        joined.append(current + stripped)
        current = ""
    result = []
    for instruction in joined:
        keyword, _, rest = instruction.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def _command(form: str) -> list[str]:
    """A CMD/ENTRYPOINT argument: exec form (JSON array) or shell form (run by /bin/sh -c)."""
    form = form.strip()
    if form.startswith("["):
        return json.loads(form)
    return ["/bin/sh", "-c", form]


def seconds(duration: str) -> float:
    match = _DURATION.match(duration)
    assert match and duration, f"not a docker duration: {duration!r}"
    hours, minutes, secs, millis = match.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(secs or 0) + int(millis or 0) / 1000


@dataclass(frozen=True)
class Healthcheck:
    command: list[str]
    interval_s: float
    timeout_s: float
    start_period_s: float
    retries: int

    def url(self) -> tuple[int, str] | None:
        """(port, path) of the 127.0.0.1 URL the check asks, when it asks one."""
        match = re.search(r"https?://(?:127\.0\.0\.1|localhost):(\d+)(/[^'\"\s)]*)", " ".join(self.command))
        return (int(match.group(1)), match.group(2)) if match else None


@dataclass(frozen=True)
class Dockerfile:
    exposed_ports: frozenset[int]
    user: str
    entrypoint: list[str]
    healthcheck: Healthcheck

    @classmethod
    def parse(cls, path: Path = DOCKERFILE) -> "Dockerfile":
        ports: set[int] = set()
        user = entrypoint = healthcheck = None
        for keyword, rest in _instructions(path.read_text(encoding="utf-8")):
            if keyword == "EXPOSE":
                ports |= {int(word.split("/")[0]) for word in rest.split()}
            elif keyword == "USER":
                user = rest
            elif keyword == "ENTRYPOINT":
                entrypoint = _command(rest)
            elif keyword == "HEALTHCHECK":
                healthcheck = _healthcheck(rest)
        assert ports and user and entrypoint and healthcheck, f"{path}: EXPOSE, USER, ENTRYPOINT or HEALTHCHECK missing"
        return cls(frozenset(ports), user, entrypoint, healthcheck)


def _healthcheck(rest: str) -> Healthcheck:
    match = re.match(r"^((?:--\S+\s+)*)CMD\s+(.*)$", rest, re.S)
    assert match, f"HEALTHCHECK without CMD: {rest}"
    options = {"interval": "30s", "timeout": "30s", "start-period": "0s", "retries": "3"}  # docker's defaults
    options |= dict(word[2:].partition("=")[::2] for word in match.group(1).split())
    return Healthcheck(command=_command(match.group(2)), interval_s=seconds(options["interval"]),
                       timeout_s=seconds(options["timeout"]), start_period_s=seconds(options["start-period"]),
                       retries=int(options["retries"]))


@dataclass(frozen=True)
class Entrypoint:
    """What the image's entrypoint does with the server's options, from its own sources: the tritonserver options
    it sets or refuses (a chart must not pass them), and the longest it may take from SIGTERM to exit.
    gateway/tritonserver.py and gateway/manifest.py (the repository) define the options, gateway/settings.py the
    drain and exit timeouts."""

    reserved_options: frozenset[str]
    shutdown_s: float

    @classmethod
    def read(cls, root: Path = ROOT) -> "Entrypoint":
        probe = (
            "import json, re\n"
            "from gateway import manifest, settings, tritonserver\n"
            "s = settings.Settings(tritonserver=['tritonserver'])\n"
            "script = open('docker/serve_image.sh').read()\n"
            # the repository: the image's (TRITONED_REPOSITORY), which the gateway refuses to get twice
            "print(json.dumps({'options': [*tritonserver.OWNED_OPTIONS, *manifest.REPOSITORY_OPTIONS,"
            " *(o.split('=')[0] for o in tritonserver.SERVER_OPTIONS),"
            " *re.findall(r'tritonserver (--[a-z-]+)=', script)],"
            # after SIGTERM: the drain delay, the drain (requests in flight), then tritonserver's exit timeout
            # and the 5 s the gateway grants it on top before killing it (gateway/app.py)
            " 'shutdown': s.drain_delay_s + s.drain_timeout_s + s.triton_exit_timeout_s + 5}))\n"
        )
        result = subprocess.run(["python3", "-c", probe], capture_output=True, text=True, timeout=60, cwd=root,
                                env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
        assert result.returncode == 0, f"the gateway's settings could not be read: {result.stderr[-2000:]}"
        found = json.loads(result.stdout)
        return cls(reserved_options=frozenset(found["options"]), shutdown_s=float(found["shutdown"]))


def accepts_admin_key(key: str, root: Path = ROOT) -> bool:
    """Whether the image's lock-down takes `key` as TRITONED_ADMIN_KEY (`python -m gateway.lockdown` exits 0)."""
    environment = {"TRITONED_ADMIN_KEY": key, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}
    result = subprocess.run(["python3", "-m", "gateway.lockdown"], env=environment, capture_output=True, timeout=30,
                            cwd=root)
    return result.returncode == 0
