"""Kubernetes manifests agree with each other: Service selectors match pod labels, probes hit
declared ports, referenced secrets exist in the example, job names match the ones rules/
expects, and the mounted configs pass the commands' own `check`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.helpers import (
    DOCKERFILE,
    IMAGE,
    K8S,
    RULES,
    check_config,
    env_refs,
    example_secrets,
    flag,
    kustomization,
    load_all,
    of_kind,
    pod_specs,
    remediator_available,
    rule_job_names,
    selects,
    taskmedic_containers,
)


def test_services_select_pods_and_ports() -> None:
    for service in of_kind("Service"):
        pods = [t for _, t in pod_specs() if selects(service["spec"]["selector"], t["metadata"]["labels"])]
        assert pods, f"Service {service['metadata']['name']} selects no pod template"
        for port in service["spec"]["ports"]:
            names = {p.get("name") for t in pods for c in t["spec"]["containers"] for p in c.get("ports", [])}
            numbers = {p["containerPort"] for t in pods for c in t["spec"]["containers"] for p in c.get("ports", [])}
            assert port["targetPort"] in names | numbers, f"{service['metadata']['name']}: {port['targetPort']}"


def test_servicemonitors_scrape_the_jobs_the_rules_expect() -> None:
    services = of_kind("Service")
    jobs = set()
    for monitor in of_kind("ServiceMonitor"):
        spec = monitor["spec"]
        matched = [s for s in services if selects(spec["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
        assert matched, f"ServiceMonitor {monitor['metadata']['name']} selects no Service"
        for endpoint in spec["endpoints"]:
            for service in matched:
                ports = {p["name"] for p in service["spec"]["ports"]}
                assert endpoint["port"] in ports, (
                    f"{monitor['metadata']['name']}: {service['metadata']['name']} has no port {endpoint['port']}")
            assert endpoint.get("path", "/metrics") == "/metrics"
        # Without jobLabel, the operator names the job after the Service.
        jobs.update(s["metadata"]["labels"][spec["jobLabel"]] if "jobLabel" in spec else s["metadata"]["name"]
                    for s in matched)
    assert {"taskmedic-exporter", "taskmedic-remediator"} <= jobs
    assert rule_job_names() <= jobs, f"rules/ expects jobs {sorted(rule_job_names() - jobs)} that nothing scrapes"


@pytest.mark.parametrize("entry", taskmedic_containers(), ids=lambda e: f"{e[0]['metadata']['name']}/{e[2]['name']}")
def test_taskmedic_container_hardening(entry: tuple[dict[str, Any], dict[str, Any], dict[str, Any]]) -> None:
    _, template, container = entry
    pod_sc = template["spec"].get("securityContext", {})
    sc = container.get("securityContext", {})
    assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
    assert sc.get("runAsUser", pod_sc.get("runAsUser", 10001)) != 0
    assert sc.get("readOnlyRootFilesystem") is True
    assert sc.get("allowPrivilegeEscalation") is False
    assert "ALL" in sc.get("capabilities", {}).get("drop", [])
    assert not sc.get("capabilities", {}).get("add")
    assert not sc.get("privileged", False)
    assert sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type") == "RuntimeDefault"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container.get("resources", {}).get(kind, {})), f"resources.{kind}"
    # A writable /tmp, since the root filesystem is read-only.
    assert "/tmp" in {m["mountPath"] for m in container.get("volumeMounts", [])}


@pytest.mark.parametrize("entry", taskmedic_containers(), ids=lambda e: f"{e[0]['metadata']['name']}/{e[2]['name']}")
def test_taskmedic_container_command_and_probes(entry: tuple[dict[str, Any], dict[str, Any], dict[str, Any]]) -> None:
    _, _, container = entry
    args = container["args"]
    command = args[0]
    assert command in ("exporter", "remediator"), "the image entrypoint dispatches on the first argument"
    port = int(flag(args, "--listen").rsplit(":", 1)[1])
    assert port == {"exporter": 9863, "remediator": 9864}[command]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port in ports.values()
    ready_path = {"exporter": "/healthz", "remediator": "/readyz"}[command]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", ready_path)):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports.get(get["port"], get["port"]) == port, f"{probe} hits another port"


def mounted_config(template: dict[str, Any], container: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The ConfigMap text behind the container's --config path."""
    config_path = flag(container["args"], "--config")
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    for mount in container["volumeMounts"]:
        if config_path.startswith(mount["mountPath"].rstrip("/") + "/"):
            volume = volumes[mount["name"]]
            assert "configMap" in volume, f"{config_path} is not mounted from a ConfigMap"
            configmap = next(c for c in of_kind("ConfigMap") if c["metadata"]["name"] == volume["configMap"]["name"])
            key = config_path[len(mount["mountPath"].rstrip("/")) + 1:]
            assert key in configmap["data"], f"ConfigMap {configmap['metadata']['name']} has no key {key}"
            return configmap["data"][key], volumes
    pytest.fail(f"{config_path} is not inside any volumeMount")


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment, secretKeyRefs filled from secret.example.yaml."""
    secrets = example_secrets()
    env = {}
    for source in container.get("envFrom", []):
        env.update(secrets[source["secretRef"]["name"]])
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] in secrets, f"Secret {ref['name']} is not in secret.example.yaml"
            assert ref["key"] in secrets[ref["name"]], f"Secret {ref['name']} has no key {ref['key']} in the example"
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
        elif "value" in var:
            env[var["name"]] = var["value"]
    return env


def image_paths(text: str, template: dict[str, Any], container: dict[str, Any], tmp_path: Path) -> str:
    """Map paths inside the container to this checkout: the image's rules, mounted Secrets."""
    assert "COPY rules/ /usr/share/taskmedic/rules/" in DOCKERFILE.read_text(encoding="utf-8")
    text = text.replace("/usr/share/taskmedic/rules", str(RULES))
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    secrets = example_secrets()
    for mount in container["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret:
            folder = tmp_path / mount["name"]
            folder.mkdir()
            data = secrets[secret["secretName"]]
            for item in secret.get("items") or [{"key": k, "path": k} for k in data]:
                (folder / item["path"]).write_text(data[item["key"]], encoding="utf-8")
            text = text.replace(mount["mountPath"], str(folder))
    return text


@pytest.mark.parametrize("entry", taskmedic_containers(), ids=lambda e: f"{e[0]['metadata']['name']}/{e[2]['name']}")
def test_configmap_config_passes_check(entry: tuple[dict[str, Any], dict[str, Any], dict[str, Any]],
                                       tmp_path: Path) -> None:
    _, template, container = entry
    text, _ = mounted_config(template, container)
    env = container_env(container)
    assert env_refs(text) <= set(env), f"config needs {sorted(env_refs(text) - set(env))} from the environment"
    command = container["args"][0]
    if command == "remediator":
        assert re.search(r"^\s*journal:\s*\$\{", text, re.M), "the shared journal DSN comes from a Secret"
        if not remediator_available():
            pytest.skip("taskmedic-remediator is not implemented in this checkout yet")
    result = check_config(command, image_paths(text, template, container, tmp_path), env, tmp_path)
    assert result.returncode == 0, result.stderr


def test_exporter_is_a_sidecar_sharing_the_process_namespace() -> None:
    pods = [(w, t) for w, t, c in taskmedic_containers() if c["args"][0] == "exporter"]
    assert pods, "no workload carries the exporter"
    for workload, template in pods:
        containers = template["spec"]["containers"]
        assert any(c["image"].split(":")[0] != IMAGE for c in containers), "the exporter has no engine beside it"
        assert template["spec"].get("shareProcessNamespace") is True, workload["metadata"]["name"]
        assert not template["spec"].get("hostPID"), "the shared pod namespace is enough"


def test_remediator_replicas_and_disruption_budget() -> None:
    ((workload, template),) = [(w, t) for w, t, c in taskmedic_containers() if c["args"][0] == "remediator"]
    replicas = workload["spec"]["replicas"]
    assert replicas >= 2
    assert workload["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    budgets = [p for p in of_kind("PodDisruptionBudget")
               if selects(p["spec"]["selector"]["matchLabels"], template["metadata"]["labels"])]
    assert len(budgets) == 1, "exactly one PodDisruptionBudget covers the remediator"
    min_available = budgets[0]["spec"]["minAvailable"]
    assert 1 <= min_available < replicas, "the budget must keep one up and still allow a drain"


def test_secrets_are_referenced_never_inlined() -> None:
    assert not of_kind("Secret"), "Secrets belong in secret.example.yaml only, not in the applied manifests"
    for name, data in example_secrets().items():
        assert data, f"{name}: empty"
        for key, value in data.items():
            assert "CHANGE_ME" in value, f"secret.example.yaml {name}.{key} must be a placeholder"
    assert all("data" not in s for s in load_all(K8S / "secret.example.yaml"))
    credential = re.compile(r"(URL|DSN|TOKEN|PASSWORD|SECRET)", re.I)
    for _, _, container in taskmedic_containers():
        for var in container.get("env", []):
            if credential.search(var["name"]):
                assert "secretKeyRef" in var.get("valueFrom", {}), f"{var['name']} must come from a Secret"
    secrets = example_secrets()
    for _, template in pod_specs():
        for volume in template["spec"]["volumes"]:
            if "secret" in volume:
                name = volume["secret"]["secretName"]
                assert name in secrets
                for item in volume["secret"].get("items", []):
                    assert item["key"] in secrets[name]
    password_in_url = re.compile(r"://[^/\s:@${}]+:[^@\s${}]+@")
    for configmap in of_kind("ConfigMap"):
        for text in configmap["data"].values():
            assert not password_in_url.search(text), f"ConfigMap {configmap['metadata']['name']} inlines a password"


def test_alertmanager_receiver_snippet(tmp_path: Path) -> None:
    snippet = yaml.safe_load((K8S / "alertmanager-receiver.yml").read_text(encoding="utf-8"))
    (receiver,) = [r for r in snippet["receivers"] if r.get("webhook_configs")]
    assert receiver["name"] in {r["receiver"] for r in snippet["route"]["routes"]}
    (hook,) = receiver["webhook_configs"]
    assert hook["send_resolved"] is True
    assert isinstance(hook["max_alerts"], int) and hook["max_alerts"] > 0
    auth = hook["http_config"]["authorization"]
    assert "credentials" not in auth, "the token is read from a file, never inlined"
    url = urlsplit(hook["url"])
    service = next(s for s in of_kind("Service") if s["metadata"]["name"] == "taskmedic-remediator")
    assert url.hostname == f"{service['metadata']['name']}.{kustomization()['namespace']}.svc"
    assert url.port in {p["port"] for p in service["spec"]["ports"]}
    assert url.path == "/alerts"
    # Prometheus Operator mounts Alertmanager's spec.secrets at /etc/alertmanager/secrets/<name>/<key>.
    match = re.fullmatch(r"/etc/alertmanager/secrets/([^/]+)/([^/]+)", auth["credentials_file"])
    assert match, auth["credentials_file"]
    secret, key = match.groups()
    ((_, template),) = [(w, t) for w, t, c in taskmedic_containers() if c["args"][0] == "remediator"]
    remediator_secrets = {v["secret"]["secretName"]: v["secret"] for v in template["spec"]["volumes"] if "secret" in v}
    assert secret in remediator_secrets, "Alertmanager must send the token the remediator checks"
    assert key in {i["key"] for i in remediator_secrets[secret].get("items", [])} | set(example_secrets()[secret])
    if shutil.which("amtool") is None:
        pytest.skip("amtool not installed")
    # A complete config around the snippet: a default receiver plus the snippet's routes and receivers.
    full = {"route": {**snippet["route"], "receiver": "default"},
            "receivers": [{"name": "default"}, *snippet["receivers"]]}
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(full), encoding="utf-8")
    out = subprocess.run(["amtool", "check-config", str(tmp_path / "alertmanager.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
