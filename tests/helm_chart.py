"""The Helm chart deploy/helm/tritoned-bert rendered by Helm's own engine (helm-python-sdk binds Helm v4's Go
SDK: no helm binary, no cluster), its documented variants (the values files in its examples/), and the
`docker run` options that its Deployment's pod spec amounts to."""
from __future__ import annotations

import base64
import copy
import re
import shlex
from pathlib import Path
from typing import Iterable

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "tritoned-bert"
EXAMPLES = CHART / "examples"
RELEASE = "demo"
NAMESPACE = "ml"
_BINARY_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DECIMAL_SUFFIXES = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "m": 10**-3, "": 1}


def deep_merge(base: dict, override: dict) -> dict:
    """Helm's merge of values: maps merge key by key, anything else is replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def variants() -> dict[str, dict]:
    """The documented variants: the default values, and each values file of the chart's examples/."""
    found = {"default": {}}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        found[path.stem] = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return found


def render_templates(values: dict | None = None, chart: Path = CHART, release: str = RELEASE,
                     namespace: str = NAMESPACE) -> dict[str, str]:
    """template path -> rendered text, as `helm template RELEASE CHART -n NAMESPACE` renders it."""
    import helm_python as helm

    with helm.Chart.load(str(chart)) as loaded:
        return loaded.render(values or {}, name=release, namespace=namespace, is_install=True)


def render(values: dict | None = None, chart: Path = CHART, release: str = RELEASE,
           namespace: str = NAMESPACE) -> list[dict]:
    """The Kubernetes objects the chart renders with `values` (NOTES.txt left out)."""
    objects = []
    for path, text in sorted(render_templates(values, chart, release, namespace).items()):
        if path.endswith(".yaml"):
            objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def the(objects: Iterable[dict], kind: str) -> dict:
    """The one object of `kind`."""
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}: {[o['kind'] for o in objects]}"
    return found[0]


def kinds(objects: Iterable[dict]) -> list[str]:
    return sorted(obj["kind"] for obj in objects)


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity (256Mi, 1.5, 500m, 2G) as a number (bytes, cores)."""
    match = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T|m|)", str(value))
    assert match, f"not a quantity: {value!r}"
    number, suffix = float(match.group(1)), match.group(2)
    return number * {**_BINARY_SUFFIXES, **_DECIMAL_SUFFIXES}[suffix]


def server_container(pod_spec: dict) -> dict:
    containers = pod_spec["containers"]
    assert len(containers) == 1 and not pod_spec.get("initContainers"), "one container expected"
    return containers[0]


def _env(container: dict, objects: list[dict]) -> list[str]:
    """-e NAME=VALUE for each environment variable, Secret references resolved from the rendered Secrets
    or from `objects` the caller adds (as Kubernetes would from the cluster's Secrets)."""
    secrets = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "Secret"}
    options = []
    for variable in container.get("env", []):
        if "value" in variable:
            value = variable["value"]
        else:
            ref = variable["valueFrom"]["secretKeyRef"]
            secret = secrets[ref["name"]]
            value = (secret.get("stringData") or {}).get(ref["key"])
            if value is None:
                value = base64.b64decode(secret["data"][ref["key"]]).decode()
        options += ["-e", f"{variable['name']}={value}"]
    assert not container.get("envFrom"), "envFrom is not translated"
    return options


def _security(pod_spec: dict, container: dict) -> list[str]:
    pod_context, context = pod_spec.get("securityContext", {}), container.get("securityContext", {})
    merged = {**pod_context, **context}  # the container's fields win, as in Kubernetes
    options = ["--user", f"{merged['runAsUser']}:{merged.get('runAsGroup', 0)}"]
    for group in [pod_context.get("fsGroup"), *pod_context.get("supplementalGroups", [])]:
        if group is not None:
            options += ["--group-add", str(group)]
    if context.get("readOnlyRootFilesystem"):
        options.append("--read-only")
    capabilities = context.get("capabilities", {})
    options += [word for cap in capabilities.get("drop", []) for word in ("--cap-drop", cap)]
    options += [word for cap in capabilities.get("add", []) for word in ("--cap-add", cap)]
    if context.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    assert not merged.get("privileged"), "privileged pods are not translated"
    seccomp = merged.get("seccompProfile", {}).get("type", "Unconfined")
    # RuntimeDefault is the container engine's default profile: docker applies its own without an option.
    assert seccomp in ("RuntimeDefault", "Unconfined"), f"seccomp {seccomp} is not translated"
    if seccomp == "Unconfined":
        options += ["--security-opt", "seccomp=unconfined"]
    return options


def _volumes(pod_spec: dict, container: dict) -> list[str]:
    """A tmpfs per emptyDir mount, of the emptyDir's size limit (an emptyDir is writable by everyone)."""
    volumes = {volume["name"]: volume for volume in pod_spec.get("volumes", [])}
    options = []
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        assert set(volume) == {"name", "emptyDir"}, f"only emptyDir volumes are translated: {volume}"
        size = int(quantity(volume["emptyDir"]["sizeLimit"]))
        options += ["--tmpfs", f"{mount['mountPath']}:size={size},mode=0777"]
    return options


def _resources(container: dict) -> list[str]:
    """Limits as docker's hard limits; requests as the kubelet turns them into cgroup settings."""
    limits, requests = container["resources"].get("limits", {}), container["resources"].get("requests", {})
    options = []
    if "memory" in limits:
        options += ["--memory", str(int(quantity(limits["memory"])))]
    if "cpu" in limits:
        options += ["--cpus", f"{quantity(limits['cpu']):g}"]
    if "memory" in requests:
        options += ["--memory-reservation", str(int(quantity(requests["memory"])))]
    if "cpu" in requests:
        options += ["--cpu-shares", str(max(2, int(quantity(requests["cpu"]) * 1024)))]
    return options


def docker_run_command(objects: list[dict], name: str, host_ports: dict[str, int]) -> list[str]:
    """`docker run` of the Deployment's pod spec: same user, groups, read-only root, capabilities, privilege
    escalation, seccomp, emptyDirs as tmpfs of their size limits, environment (Secrets resolved), memory and
    CPU, grace period, image and arguments. host_ports maps a container port's name to a 127.0.0.1 port."""
    pod_spec = the(objects, "Deployment")["spec"]["template"]["spec"]
    container = server_container(pod_spec)
    options = ["docker", "run", "-d", "--name", name, "--label", "tritoned-test=1"]
    options += _security(pod_spec, container)
    options += _volumes(pod_spec, container)
    options += _env(container, objects)
    options += _resources(container)
    options += ["--stop-timeout", str(pod_spec.get("terminationGracePeriodSeconds", 30))]
    for port in container["ports"]:
        options += ["-p", f"127.0.0.1:{host_ports[port['name']]}:{port['containerPort']}"]
    if container.get("command"):
        options += ["--entrypoint", container["command"][0]]
    return [*options, container["image"], *container.get("command", [])[1:], *container.get("args", [])]


def port_by_name(container: dict) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container["ports"]}


def helm_commands(readme: Path) -> list[list[str]]:
    """The `helm install|upgrade ...` command lines of a README (continuation lines joined), split into words."""
    text = readme.read_text(encoding="utf-8").replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        start = re.search(r"\bhelm (install|upgrade) ", line)
        if start:
            command = line[start.start():]
            if line[:start.start()].count("`") % 2:  # inline code: up to its closing backtick
                command = command.split("`")[0]
            commands.append(shlex.split(command.split(" #")[0]))
    return commands


def values_of_command(words: list[str], base: Path = ROOT) -> tuple[str, str, dict]:
    """(release, namespace, values) of `helm install|upgrade RELEASE CHART [-n NS] [-f FILE] [--set K=V]...`."""
    import helm_python as helm

    assert words[:2] in (["helm", "install"], ["helm", "upgrade"]), words
    positional, values, namespace = [], {}, "default"
    args = iter(words[2:])
    for word in args:
        if word in ("-n", "--namespace"):
            namespace = next(args)
        elif word in ("-f", "--values"):
            path = next(args)
            values = deep_merge(values, yaml.safe_load(_resolve(path, base).read_text(encoding="utf-8")) or {})
        elif word == "--set":
            values = deep_merge(values, helm.parse_set_string(next(args)))
        elif word.startswith("--"):
            continue  # --reuse-values, --wait, ...
        else:
            positional.append(word)
    release, chart = positional
    assert _resolve(chart, base) == CHART, f"not this chart: {chart}"
    return release, namespace, values


def _resolve(path: str, base: Path) -> Path:
    for candidate in (base / path, CHART / path):
        if candidate.exists():
            return candidate.resolve()
    raise AssertionError(f"{path} does not exist (relative to {base} or the chart)")
