"""The Helm chart deploy/helm/tritoned-bert, offline and with real tools: rendered by Helm's engine
(helm-python-sdk, Helm v4) for the default values and every documented variant (its examples/), each object
validated strictly against the Kubernetes JSON schemas (kubernetes-validate), scanned by checkov, and
compared with what the image declares (Dockerfile, docker/serve_image.sh, gateway/).
The pod spec itself runs in tests/test_helm_pod.py."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from docker_helpers import readme_docker_run
from helm_chart import (CHART, NAMESPACE, ROOT, helm_commands, kinds, quantity, render, server_container, the,
                        values_of_command, variants)
from image_contract import Dockerfile, Entrypoint, accepts_admin_key

CHART_README = CHART / "README.md"
ADAPTER_VALUES = CHART.parent / "prometheus-adapter-values.yaml"
CHECKOV_VENV = ROOT / ".venv-tools" / "checkov"
CHECKOV_REQUIREMENTS = ROOT / "requirements-checkov.txt"
# Custom resources: kubernetes-validate has no schema for them; their Kubernetes-typed parts are validated.
CUSTOM_KINDS = {"ServiceMonitor", "ScaledObject", "InferenceService"}
# Fields KServe adds to a PodSpec in an InferenceService's predictor (ComponentExtensionSpec) that this chart sets.
KSERVE_PREDICTOR_FIELDS = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"}


def pod_spec_of(obj: dict) -> dict:
    if obj["kind"] == "InferenceService":
        return {k: v for k, v in obj["spec"]["predictor"].items() if k not in KSERVE_PREDICTOR_FIELDS}
    return obj["spec"]["template"]["spec"]


def workload(objects: list[dict]) -> dict:
    """The Deployment, or the InferenceService of the KServe variant."""
    found = [obj for obj in objects if obj["kind"] in ("Deployment", "InferenceService")]
    assert len(found) == 1, kinds(objects)
    return found[0]


@pytest.fixture(scope="module")
def all_variants() -> dict[str, dict]:
    """The documented variants plus the chart-made Secret (a fresh key: none is committed)."""
    found = variants()
    assert len(found) >= 7, f"examples/ lost variants: {sorted(found)}"
    found["admin-key-value"] = {"adminKey": {"value": uuid.uuid4().hex}}
    # The end-to-end liveness check of the image (/opt/tritoned/healthcheck).
    found["liveness-exec"] = {"probes": {"livenessCommand": ["/opt/tritoned/healthcheck"]}}
    return found


@pytest.fixture(scope="module")
def rendered(all_variants: dict[str, dict]) -> dict[str, list[dict]]:
    return {name: render(values) for name, values in all_variants.items()}


def test_every_variant_renders_what_it_documents(rendered: dict[str, list[dict]]) -> None:
    plain = ["Deployment", "NetworkPolicy", "PodDisruptionBudget", "Service", "ServiceAccount"]
    assert kinds(rendered["default"]) == sorted([*plain, "HorizontalPodAutoscaler"])
    assert kinds(rendered["fixed-replicas"]) == plain
    assert the(rendered["fixed-replicas"], "Deployment")["spec"]["replicas"] == 3
    assert "replicas" not in the(rendered["default"], "Deployment")["spec"], "the HPA must own the replica count"
    assert kinds(rendered["keda"]) == sorted([*plain, "ScaledObject"])
    assert kinds(rendered["kserve"]) == ["InferenceService", "ServiceAccount"]
    assert kinds(rendered["admin-key-value"]) == sorted([*plain, "HorizontalPodAutoscaler", "Secret"])
    assert "ServiceMonitor" in kinds(rendered["prometheus-operator"])
    assert "prometheus.io/scrape" not in (the(rendered["prometheus-operator"], "Deployment")["spec"]["template"]
                                          ["metadata"].get("annotations") or {})
    assert "@sha256:" in server_container(pod_spec_of(workload(rendered["pinned-digest"])))["image"]
    liveness = server_container(pod_spec_of(workload(rendered["liveness-exec"])))["livenessProbe"]
    assert liveness["exec"]["command"] == ["/opt/tritoned/healthcheck"] and "httpGet" not in liveness
    metrics = the(rendered["queue-time-hpa"], "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["Resource", "Pods"], metrics


def test_every_object_validates_strictly_against_the_newest_kubernetes_schema(rendered) -> None:
    from kubernetes_validate import utils

    version = utils.latest_version()
    assert [int(part) for part in version.split(".")[:2]] >= [1, 35], f"kubernetes-validate ships only {version}"
    custom_seen = set()
    for name, objects in rendered.items():
        for obj in objects:
            if obj["kind"] in CUSTOM_KINDS:
                custom_seen.add(obj["kind"])
                for part in kubernetes_typed_parts(obj):
                    assert utils.validate(part, version, strict=True) == utils.major_minor(version), (name, part)
                continue
            try:
                utils.validate(obj, version, strict=True)
            except utils.ValidationError as error:
                pytest.fail(f"{name}: {obj['kind']} {obj['metadata']['name']}: {'.'.join(map(str, error.path))}: "
                            f"{error.message}")
    assert custom_seen == CUSTOM_KINDS, f"variants no longer render {CUSTOM_KINDS - custom_seen}"
    # Strict means strict: a misspelt field fails.
    broken = json.loads(json.dumps(the(rendered["default"], "Deployment")))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(utils.ValidationError, match="livenesProbe"):
        utils.validate(broken, version, strict=True)


def kubernetes_typed_parts(obj: dict) -> list[dict]:
    """The parts of a custom resource that are Kubernetes types, as objects kubernetes-validate knows."""
    meta = {"name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"]}
    if obj["kind"] == "InferenceService":  # predictor = PodSpec + KServe's fields
        return [{"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec_of(obj)}]
    if obj["kind"] == "ScaledObject":  # advanced.horizontalPodAutoscalerConfig.behavior: an HPA's behavior
        spec = obj["spec"]
        hpa = {"scaleTargetRef": spec["scaleTargetRef"], "minReplicas": spec["minReplicaCount"],
               "maxReplicas": spec["maxReplicaCount"],
               "behavior": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]}
        return [{"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta, "spec": hpa}]
    if obj["kind"] == "ServiceMonitor":  # selector: a LabelSelector, as in a PodDisruptionBudget
        return [{"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta,
                 "spec": {"selector": obj["spec"]["selector"], "maxUnavailable": 1}}]
    raise AssertionError(obj["kind"])


def test_selectors_ports_and_annotations_fit_together(rendered) -> None:
    objects = rendered["default"]
    deployment = the(rendered["default"], "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    container = server_container(deployment["spec"]["template"]["spec"])
    port_names = {port["name"] for port in container["ports"]}
    assert port_names == {"http", "grpc", "metrics"}

    def selects(selector: dict) -> bool:
        return selector.items() <= pod_labels.items()

    assert selects(deployment["spec"]["selector"]["matchLabels"])
    service = the(rendered["default"], "Service")
    assert selects(service["spec"]["selector"])
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {n: n for n in port_names}
    assert selects(the(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    policy = the(objects, "NetworkPolicy")["spec"]
    assert selects(policy["podSelector"]["matchLabels"])
    assert {p["port"] for rule in policy["ingress"] for p in rule["ports"]} == port_names
    for constraint in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert selects(constraint["labelSelector"]["matchLabels"]), constraint
    monitor = the(rendered["prometheus-operator"], "ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["endpoints"]] == ["metrics"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    metrics_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
    assert annotations["prometheus.io/port"] == str(metrics_port) and annotations["prometheus.io/scrape"] == "true"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    for obj in [obj for variant in rendered.values() for obj in variant]:
        assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]


def test_chart_agrees_with_the_image() -> None:
    """Ports, user, entrypoint, health checks, shutdown and /dev/shm against the Dockerfile, the entrypoint's
    --help and the README's docker run."""
    image = Dockerfile.parse()
    entrypoint = Entrypoint.read()
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    for objects in (render(), render({"kserve": {"enabled": True}})):
        pod = pod_spec_of(workload(objects))
        container = server_container(pod)
        assert "command" not in container, "the chart must keep the image's ENTRYPOINT"
        for context in (pod["securityContext"], container["securityContext"]):
            assert str(context["runAsUser"]) == image.user and context["runAsNonRoot"] is True
        health = image.healthcheck
        url = health.url()
        liveness = container["livenessProbe"]
        if "exec" in liveness:
            assert liveness["exec"]["command"] == health.command, "liveness must run the image's own HEALTHCHECK"
        else:
            assert url, (f"the image's HEALTHCHECK runs {health.command}: set probes.livenessCommand to it "
                         "(liveness asks a URL the image no longer checks)")
            assert (liveness["httpGet"]["port"], liveness["httpGet"]["path"]) == url
        if url:
            for probe in ("startupProbe", "readinessProbe"):
                assert (container[probe]["httpGet"]["port"], container[probe]["httpGet"]["path"]) == url, probe
        assert liveness["timeoutSeconds"] >= health.timeout_s
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= health.start_period_s
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        readme_run = readme_docker_run(ROOT / "README.md", "ensemble_model")
        shm_size = next(w.split("=", 1)[1] for w in readme_run if w.startswith("--shm-size="))
        assert quantity(volumes[mounts["/dev/shm"]]["emptyDir"]["sizeLimit"]) >= quantity(shm_size.replace("m", "Mi"))
        grace = pod["terminationGracePeriodSeconds"]
        pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
        assert grace > pre_stop + values["server"]["shutdownSeconds"]
    deployment = server_container(pod_spec_of(workload(render())))
    assert {port["containerPort"] for port in deployment["ports"]} == image.exposed_ports
    assert values["server"]["shutdownSeconds"] >= entrypoint.shutdown_s, \
        f"server.shutdownSeconds is shorter than the image may take from SIGTERM to exit ({entrypoint.shutdown_s} s)"


def test_chart_refuses_the_options_the_image_sets_or_refuses() -> None:
    import helm_python as helm

    image_reserved = Entrypoint.read().reserved_options
    helpers = (CHART / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
    chart_reserved = set(re.findall(r'"(--[a-z-]+)"', re.search(r"\$reserved := list (.*)", helpers).group(1)))
    assert chart_reserved == image_reserved, (f"the chart's $reserved (templates/_helpers.tpl) and the image differ: "
                                              f"add {sorted(image_reserved - chart_reserved)}, "
                                              f"remove {sorted(chart_reserved - image_reserved)}")
    for option in image_reserved:
        with pytest.raises(helm.HelmRenderError, match=re.escape(option)):
            render({"server": {"extraArgs": ["--log-verbose=1", f"{option}=x"]}})
    container = server_container(pod_spec_of(workload(render({"server": {"extraArgs": ["--log-verbose=1"]}}))))
    assert container["args"] == ["--log-verbose=1"]


@pytest.mark.parametrize("key", ["k" * 15, "k" * 16, uuid.uuid4().hex, "abc def ghi jkl mno", "abc'def\"ghi$jkl`",
                                 "ключ-администратора-1234", "a.b_c~d+e/f=g:h,i-j", "x" * 16 + "\n", "-" * 16])
def test_admin_key_rules_match_the_entrypoints(key: str) -> None:
    import helm_python as helm

    if accepts_admin_key(key):
        secret = the(render({"adminKey": {"value": key}}), "Secret")
        assert base64.b64decode(secret["data"]["admin-key"]).decode() == key
    else:
        with pytest.raises(helm.HelmValuesError, match="adminKey/value"):
            render({"adminKey": {"value": key}})


@pytest.mark.parametrize(("values", "message"), [
    ({"replicaCount": "three"}, "replicaCount"),
    ({"autoscalling": {"enabled": True}}, "autoscalling"),
    ({"image": {"tag": "latest"}}, "image.tag"),
    ({"image": {"digest": "md5:abc"}}, "image/digest"),
    ({"terminationGracePeriodSeconds": 15}, "terminationGracePeriodSeconds"),
    ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas"),
    ({"autoscaling": {"targetCPUUtilizationPercentage": None}}, "no metric"),
    ({"server": {"extraArgs": ["bash"]}}, "extraArgs"),
    ({"adminKey": {"existingSecret": "mine", "value": "x" * 16}}, "not both"),
    ({"shm": {"sizeLimit": "lots"}}, "shm/sizeLimit"),
    ({"containerSecurityContext": {"allowPrivilegeEscalation": True}}, "allowPrivilegeEscalation"),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
    ({"resources": {"limits": {"cpu": None}}}, "cpu"),
    ({"resources": {"limits": {"cpu": "lots", "memory": "1Gi"}}}, "limits/cpu"),
])
def test_bad_values_are_refused_with_a_message_that_names_them(values: dict, message: str) -> None:
    import helm_python as helm

    with pytest.raises((helm.HelmValuesError, helm.HelmRenderError), match=re.escape(message)):
        render(values)


@pytest.mark.parametrize(("resources", "request_cpu"), [
    ({"limits": {"cpu": "6", "memory": "2Gi"}}, "6"),
    ({"limits": {"cpu": "1500m", "memory": "2Gi"}}, "1500m"),
    ({"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "4", "memory": "2Gi"}}, "1"),
])
def test_the_cpu_limit_is_the_one_number_to_set(resources: dict, request_cpu: str) -> None:
    """The server sizes itself from the container's CPU quota (limits.cpu; tests/test_helm_pod.py sees it do so):
    the chart asks for no instance or thread counts, and requests.cpu follows the limit unless set."""
    container = server_container(pod_spec_of(workload(render({"resources": resources}))))
    assert container["resources"]["limits"]["cpu"] == resources["limits"]["cpu"]
    assert container["resources"]["requests"]["cpu"] == request_cpu
    values = re.sub(r"#.*", "", (CHART / "values.yaml").read_text())  # the settings, not their comments
    assert not re.search(r"instances|ort.?threads|TRITONED_CPUS", values, re.I), "the chart asks for sizes again"


def test_helm_lint_is_clean_for_every_variant(all_variants: dict[str, dict]) -> None:
    import helm_python as helm

    for name, values in all_variants.items():
        report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
        problems = [m for m in report["messages"] if m["severity"] >= 2 or m["path"] != "Chart.yaml"]
        assert not report["errors"] and not problems, (name, report)


def test_queue_time_autoscaling_asks_for_the_same_metric_everywhere(rendered) -> None:
    """The HPA's metric is the one prometheus-adapter's rule serves; KEDA's query and the rule use the same
    Triton counters (tests/test_helm_pod.py checks the server exports them)."""
    rule = yaml.safe_load(ADAPTER_VALUES.read_text(encoding="utf-8"))["rules"]["custom"][0]
    pods_metric = the(rendered["queue-time-hpa"], "HorizontalPodAutoscaler")["spec"]["metrics"][1]["pods"]
    assert pods_metric["metric"]["name"] == rule["name"]["as"]
    query = next(t for t in the(rendered["keda"], "ScaledObject")["spec"]["triggers"]
                 if t["type"] == "prometheus")["metadata"]["query"]
    assert queue_time_counters(query) == queue_time_counters(rule["metricsQuery"]) == queue_time_counters(
        rule["seriesQuery"]) | {"nv_inference_request_success"}
    model = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))["modelName"]
    assert f'model="{model}"' in query and pods_metric["metric"]["selector"]["matchLabels"]["model"] == model


def queue_time_counters(promql: str) -> set[str]:
    return set(re.findall(r"\b(nv_[a-z_]+)\b", promql))


def test_dashboard_configmap_ships_the_charts_dashboard_file(tmp_path: Path) -> None:
    values = {"grafanaDashboard": {"enabled": True}}
    relative = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))["grafanaDashboard"]["file"]
    source = ROOT / "deploy" / "grafana" / Path(relative).name
    if source.exists():  # the project's dashboard (issue 13): the chart must ship exactly that file
        assert (CHART / relative).read_bytes() == source.read_bytes(), f"{CHART / relative} differs from {source}"
    chart = tmp_path / CHART.name
    shutil.copytree(CHART, chart)
    (chart / relative).unlink(missing_ok=True)
    assert "ConfigMap" not in kinds(render(values, chart)), "a dashboard ConfigMap without a dashboard file"
    dashboard = {"title": "tritoned-bert test", "panels": [{"targets": [{"expr": "nv_inference_request_success"}]}]}
    (chart / relative).parent.mkdir(parents=True, exist_ok=True)
    (chart / relative).write_text(json.dumps(dashboard), encoding="utf-8")
    config_map = the(render(values, chart), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert {name: json.loads(text) for name, text in config_map["data"].items()} == {Path(relative).name: dashboard}
    assert "ConfigMap" not in kinds(render({}, chart)), "the dashboard is opt-in"


@pytest.fixture(scope="module")
def checkov() -> Path:
    """checkov in its own virtual environment (its pinned dependencies clash with the project's), made or
    updated by setup_venv.sh (a no-op when up to date)."""
    result = subprocess.run([str(ROOT / "setup_venv.sh"), str(CHECKOV_REQUIREMENTS)], capture_output=True,
                            text=True, timeout=900, env={**os.environ, "TRITONED_VENV": str(CHECKOV_VENV)})
    assert result.returncode == 0, result.stderr[-4000:]
    return CHECKOV_VENV / "bin" / "checkov"


def justified_checks() -> dict[str, str]:
    """check id -> justification, from the chart README's table of checkov findings left open."""
    text = CHART_README.read_text(encoding="utf-8")
    return dict(re.findall(r"^\|\s*`?(CKV2?_K8S_\d+)`?\s*\|[^|\n]*\|\s*([^|\n]+?)\s*\|", text, re.M))


def test_checkov_finds_nothing_unjustified(checkov: Path, rendered, tmp_path: Path) -> None:
    for name, objects in rendered.items():
        (tmp_path / name).mkdir()
        for index, obj in enumerate(objects):
            (tmp_path / name / f"{index:02d}-{obj['kind'].lower()}.yaml").write_text(yaml.safe_dump(obj))
    result = subprocess.run([str(checkov), "--directory", str(tmp_path), "--framework", "kubernetes", "--output",
                             "json", "--skip-download", "--quiet", "--compact"],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "LOG_LEVEL": "ERROR"})
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads(result.stdout) if result.stdout.strip() else {}
    reports = report if isinstance(report, list) else [report]
    summary = [r["summary"] for r in reports if "summary" in r]
    assert summary and sum(s["passed"] for s in summary) > 50, f"checkov checked nothing: {result.stdout[:2000]}"
    failed: dict[str, set[str]] = {}
    for entry in reports:
        for check in entry.get("results", {}).get("failed_checks", []):
            variant = Path(check["file_path"]).parts[1]
            failed.setdefault(check["check_id"], set()).add(variant)
    justified = justified_checks()
    unjustified = {check: sorted(where) for check, where in failed.items() if check not in justified}
    assert not unjustified, f"checkov failures not justified in {CHART_README.name}: {unjustified}"
    stale = sorted(set(justified) - set(failed))
    assert not stale, f"{CHART_README.name} justifies checks that no longer fail: {stale}"
    assert "pinned-digest" not in failed.get("CKV_K8S_43", set()), "a digest must satisfy CKV_K8S_43"
    print(f"checkov {summary}; justified failures: { {k: sorted(v) for k, v in failed.items()} }")


def test_readme_helm_commands_render_and_name_the_objects_they_make() -> None:
    """Every `helm install|upgrade` of the chart's README (the one place for Kubernetes; README.md only links it)
    renders, with the -f files and --set values it gives, and the kubectl lines beside it name objects that
    install makes."""
    readme = CHART_README
    commands = helm_commands(readme)
    assert any(words[1] == "install" for words in commands), f"{readme.name} shows no helm install"
    text = readme.read_text(encoding="utf-8")
    installed: set[str] = set()
    for words in commands:
        release, namespace, values = values_of_command(words)
        objects = render(values, release=release, namespace=namespace)
        installed |= {f"{obj['kind'].lower()}/{obj['metadata']['name']}" for obj in objects}
    for reference in set(re.findall(r"\b(deployment|service)/([a-z0-9-]+)", text)):
        assert "/".join(reference) in installed, f"{readme.name} names {'/'.join(reference)}; made: {installed}"
