"""Deployment artefacts: Kubernetes manifests, the generated PrometheusRule, compose, systemd, Dockerfile.

Every manifest is checked against the Kubernetes JSON schemas (kubernetes-validate, strict: unknown
fields fail); the Prometheus Operator's CRDs (ServiceMonitor, PrometheusRule) against the subset of
their schemas we use. Beyond schemas, the files must agree with each other: Service selectors match
pod labels, probes hit declared ports, secrets referenced exist in the example, job names match the
ones rules/ expects, the compose file mounts paths that exist, and the configs pass the commands'
own `check`.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE_DIR = DEPLOY / "compose"
SYSTEMD = DEPLOY / "systemd"
DOCKERFILE = DEPLOY / "Dockerfile"
RULES = ROOT / "rules"

IMAGE = "ghcr.io/taskmedic/taskmedic"
NOT_RESOURCES = {"kustomization.yaml", "secret.example.yaml"}
CRD_GROUP = "monitoring.coreos.com/"
OLDEST_KUBERNETES = "1.29.0"


# --------------------------------------------------------------------------------------------
# helpers


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """Every document of the base, the example overlays and secret.example.yaml."""
    out = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out.extend((path.name, doc) for doc in load_all(path))
    return out


def of_kind(kind: str, *, examples: bool = False) -> list[dict[str, Any]]:
    return [d for f, d in manifests() if d["kind"] == kind and (examples or f != "secret.example.yaml")]


def doc_id(item: tuple[str, dict[str, Any]]) -> str:
    return f"{item[0]}:{item[1]['kind']}/{item[1]['metadata']['name']}"


def pod_specs() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod template) for every Deployment."""
    return [(d, d["spec"]["template"]) for d in of_kind("Deployment")]


def taskmedic_containers() -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(workload, pod template, container) for every container running the taskmedic image."""
    return [(w, t, c) for w, t in pod_specs() for c in t["spec"]["containers"]
            if c["image"].split(":")[0] == IMAGE]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def kustomization(directory: str = "base") -> dict[str, Any]:
    return yaml.safe_load((K8S / directory / "kustomization.yaml").read_text(encoding="utf-8"))


def example_secrets() -> dict[str, dict[str, str]]:
    return {s["metadata"]["name"]: s.get("stringData", {})
            for s in load_all(K8S / "secret.example.yaml")}


def rule_job_names() -> set[str]:
    """Every job="..." an alert expression in rules/*.rules.yml relies on."""
    jobs: set[str] = set()
    for path in RULES.glob("*.rules.yml"):
        jobs.update(re.findall(r'\bjob\s*=\s*"([^"]+)"', path.read_text(encoding="utf-8")))
    return jobs


def rule_files() -> list[Path]:
    return sorted(RULES.glob("*.rules.yml"))


def load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("generate_prometheusrule", K8S / "generate_prometheusrule.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_config(command: str, text: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run `python -m <command> check --config` (exporter or remediator) on a config text."""
    config = tmp_path / f"{command}-taskmedic.yml"
    config.write_text(text, encoding="utf-8")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKMEDIC_", "CAPE_", "JOBS_"))}
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", command, "check", "--config", str(config)],
                          capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=60)


def remediator_available() -> bool:
    try:
        return importlib.util.find_spec("remediator.cli") is not None
    except ModuleNotFoundError:
        return False


def env_refs(text: str) -> set[str]:
    """`${VAR}` references in a YAML document's values (comments do not count)."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", yaml.safe_dump(yaml.safe_load(text))))


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


# --------------------------------------------------------------------------------------------
# Kubernetes: schemas


def test_kustomization_lists_every_manifest() -> None:
    for directory in ("base", "overlays/cape"):
        resources = [r for r in kustomization(directory)["resources"] if not r.startswith("..")]
        assert len(resources) == len(set(resources)), "a resource is listed twice"
        on_disk = {p.name for p in (K8S / directory).glob("*.yaml")} - NOT_RESOURCES
        assert set(resources) == on_disk, f"{directory}/kustomization.yaml resources and its *.yaml differ"
    assert kustomization("overlays/cape")["resources"][0] == "../../base"
    assert kustomization()["namespace"] == "taskmedic"
    assert IMAGE in {i["name"] for i in kustomization().get("images", [])}


BUILTIN = [m for m in manifests() if not m[1]["apiVersion"].startswith(CRD_GROUP)]


@pytest.mark.parametrize("item", BUILTIN, ids=[doc_id(m) for m in BUILTIN])
def test_manifest_matches_kubernetes_schema(item: tuple[str, dict[str, Any]]) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (test extra)")
    _, doc = item
    for version in (OLDEST_KUBERNETES, kv.latest_version()):
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"Kubernetes {version}: {path}: {e.message}")
        except kv.SchemaNotFoundError as e:
            pytest.fail(e.message)


def test_schema_validation_rejects_mistakes() -> None:
    """The validator is strict: a misspelt field or a wrong type in our own Deployment fails."""
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (test extra)")
    deployment = next(d for d in of_kind("Deployment") if d["metadata"]["name"] == "taskmedic-remediator")
    kv.validate(deployment, OLDEST_KUBERNETES, strict=True)
    typo = copy.deepcopy(deployment)
    container = typo["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFileSystem"] = container["securityContext"].pop("readOnlyRootFilesystem")
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    for bad in (typo, wrong_type):
        with pytest.raises(kv.ValidationError):
            kv.validate(bad, OLDEST_KUBERNETES, strict=True)


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def test_kustomize_build_renders_everything() -> None:
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed")
    out = subprocess.run([*command, str(K8S / "overlays" / "cape")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    expected = {(d["kind"], d["metadata"]["name"]) for f, d in manifests() if f != "secret.example.yaml"}
    assert {(d["kind"], d["metadata"]["name"]) for d in rendered} == expected
    for d in rendered:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == "taskmedic", d["metadata"]["name"]


# Subsets of the Prometheus Operator CRD schemas (monitoring.coreos.com/v1, operator 0.8x): the
# fields these manifests may use, with their types and patterns. Anything else is a mistake here.
DURATION = {"type": "string",
            "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "labels": STRING_MAP,
                                                                    "annotations": STRING_MAP}}
SERVICEMONITOR_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"}, "metadata": METADATA,
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["endpoints", "selector"],
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                    "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "selector": {"type": "object", "additionalProperties": False, "properties": {
                    "matchLabels": STRING_MAP, "matchExpressions": {"type": "array"}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "properties": {
                        "port": {"type": "string"}, "targetPort": {"type": ["string", "integer"]},
                        "path": {"type": "string"}, "scheme": {"enum": ["http", "https"]},
                        "interval": DURATION, "scrapeTimeout": DURATION, "honorLabels": {"type": "boolean"},
                        "relabelings": {"type": "array"}, "metricRelabelings": {"type": "array"}}}},
            },
        },
    },
}
PROMETHEUSRULE_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"}, "metadata": METADATA,
        "spec": {"type": "object", "additionalProperties": False, "properties": {"groups": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1}, "interval": DURATION, "limit": {"type": "integer"},
                "query_offset": DURATION, "labels": STRING_MAP, "partial_response_strategy": {"type": "string"},
                "rules": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False, "required": ["expr"],
                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                    "properties": {
                        "alert": {"type": "string"}, "record": {"type": "string"},
                        "expr": {"type": ["string", "integer"]}, "for": DURATION,
                        "keep_firing_for": {**DURATION, "minLength": 1},
                        "labels": STRING_MAP, "annotations": STRING_MAP}}},
            }}}}},
    },
}
CRD_SCHEMAS = {"ServiceMonitor": SERVICEMONITOR_SCHEMA, "PrometheusRule": PROMETHEUSRULE_SCHEMA}
CRDS = [m for m in manifests() if m[1]["apiVersion"].startswith(CRD_GROUP)]


@pytest.mark.parametrize("item", CRDS, ids=[doc_id(m) for m in CRDS])
def test_operator_resource_structure(item: tuple[str, dict[str, Any]]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    _, doc = item
    assert doc["kind"] in CRD_SCHEMAS, f"no structural check for {doc['kind']}"
    errors = sorted(jsonschema.Draft202012Validator(CRD_SCHEMAS[doc["kind"]]).iter_errors(doc), key=str)
    assert not errors, "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_operator_schema_subset_rejects_mistakes() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    monitor = copy.deepcopy(of_kind("ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["scrapeInterval"] = "30s"  # the field is `interval`
    rule = copy.deepcopy(of_kind("PrometheusRule")[0])
    rule["spec"]["groups"].append({"name": "x", "rules": [{"alert": "A", "record": "b", "expr": "1"}]})
    for doc in (monitor, rule):
        assert list(jsonschema.Draft202012Validator(CRD_SCHEMAS[doc["kind"]]).iter_errors(doc))


# --------------------------------------------------------------------------------------------
# Kubernetes: the pieces agree with each other


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


# --------------------------------------------------------------------------------------------
# PrometheusRule generated from rules/


def test_prometheusrule_is_generated_from_rules() -> None:
    generator = load_generator()
    committed = (K8S / "base" / "prometheusrule.yaml").read_text(encoding="utf-8")
    assert committed == generator.render(RULES), (
        "deploy/kubernetes/base/prometheusrule.yaml is out of date: run make mixin")
    # Independently of the generator: the same groups and rules, in the same order, as rules/.
    expected = [g for f in rule_files()
                for g in (yaml.safe_load(f.read_text(encoding="utf-8")) or {}).get("groups", [])]
    groups = yaml.safe_load(committed)["spec"]["groups"]
    assert [g["name"] for g in groups] == [g["name"] for g in expected]
    for got, want in zip(groups, expected, strict=True):
        assert [(r.get("alert"), r.get("record"), r["expr"]) for r in got["rules"]] == [
            (r.get("alert"), r.get("record"), r["expr"]) for r in want.get("rules") or []]
        for g_rule, w_rule in zip(got["rules"], want.get("rules") or [], strict=True):
            assert g_rule.get("for") == (str(w_rule["for"]) if "for" in w_rule else None)
            assert g_rule.get("annotations", {}) == {k: str(v) for k, v in (w_rule.get("annotations") or {}).items()}


def test_generator_check_mode_and_errors(tmp_path: Path) -> None:
    generator = load_generator()
    rules = tmp_path / "rules"
    rules.mkdir()
    output = tmp_path / "prometheusrule.yaml"
    assert generator.main(["--rules", str(rules), "--output", str(output)]) == 0
    assert yaml.safe_load(output.read_text(encoding="utf-8"))["spec"]["groups"] == []
    assert generator.main(["--check", "--rules", str(rules), "--output", str(output)]) == 0
    (rules / "a.rules.yml").write_text(
        "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: |\n      up == 0\n    for: 5m\n"
        "    labels: {severity: warning, tier: 1}\n", encoding="utf-8")
    assert generator.main(["--check", "--rules", str(rules), "--output", str(output)]) == 1, "stale file undetected"
    assert generator.main(["--rules", str(rules), "--output", str(output)]) == 0
    (rule,) = yaml.safe_load(output.read_text(encoding="utf-8"))["spec"]["groups"][0]["rules"]
    assert rule == {"alert": "A", "expr": "up == 0\n", "for": "5m", "labels": {"severity": "warning", "tier": "1"}}
    (rules / "b.rules.yml").write_text("groups:\n- name: g\n  rules: []\n", encoding="utf-8")
    with pytest.raises(generator.RulesError, match="already used"):
        generator.render(rules)
    (rules / "b.rules.yml").write_text("groups:\n- name: h\n  rules:\n  - {alert: B, record: b, expr: '1'}\n",
                                       encoding="utf-8")
    with pytest.raises(generator.RulesError, match="exactly one"):
        generator.render(rules)


# --------------------------------------------------------------------------------------------
# compose


def compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text(encoding="utf-8"))


def dotenv_example() -> dict[str, str]:
    out = {}
    for line in (COMPOSE_DIR / ".env.example").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def interpolate(value: str, env: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(3)
        if name in env:
            return env[name]
        assert default is not None and m.group(2) in (":-", "-"), f"${{{name}}} is not defined in .env.example"
        return default
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}", one, value)


def bind_mounts(service: dict[str, Any]) -> Iterator[tuple[Path, str]]:
    for volume in service.get("volumes", []):
        source, target = (volume["source"], volume["target"]) if isinstance(volume, dict) else volume.split(":")[:2]
        if source.startswith((".", "/")):
            yield (COMPOSE_DIR / source).resolve(), target


def host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """The host path that a container path of a service maps to through its bind mounts."""
    for source, target in sorted(bind_mounts(service), key=lambda m: -len(m[1])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target):].lstrip("/")
    return None


def listen_port(service: dict[str, Any]) -> int:
    return int(flag(service["command"], "--listen").rsplit(":", 1)[1])


def test_compose_services_and_references() -> None:
    spec = compose()
    services = spec["services"]
    assert {"postgres", "redis", "prometheus", "alertmanager", "exporter", "remediator", "grafana"} <= set(services)
    env = dotenv_example()
    text = (COMPOSE_DIR / "compose.yaml").read_text(encoding="utf-8")
    interpolate(text, env)  # every ${VAR} without a default is documented in .env.example
    assert all("CHANGE_ME" in v for v in env.values()), ".env.example holds placeholders only"
    declared_volumes = set(spec.get("volumes") or {})
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            context = (COMPOSE_DIR / service["build"]["context"]).resolve()
            assert context == ROOT, "the image is built from the repository root"
            assert (context / service["build"]["dockerfile"]).resolve() == DOCKERFILE
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
        for source, _ in bind_mounts(service):
            assert source.exists(), f"{name}: {source} does not exist"
        for other in service.get("depends_on", []):
            assert other in services, f"{name} depends on unknown service {other}"
        for secret in service.get("secrets", []):
            assert secret in spec["secrets"], f"{name}: unknown secret {secret}"
    for name, secret in spec["secrets"].items():
        if "file" in secret:
            assert (COMPOSE_DIR / secret["file"]).exists(), name
        else:
            assert secret["environment"] in env, f"secret {name}: {secret['environment']} not in .env.example"
    for name in ("exporter", "remediator"):
        service = services[name]
        assert service["command"][0] == name
        assert service.get("read_only") is True and "ALL" in service.get("cap_drop", [])
        config = host_path(service, flag(service["command"], "--config"))
        assert config == COMPOSE_DIR / "taskmedic.yml", f"{name} reads {config}"
    initdb = host_path(services["postgres"], "/docker-entrypoint-initdb.d")
    assert initdb is not None
    scripts = list(initdb.glob("*.sh"))
    assert scripts and all(s.stat().st_mode & stat.S_IXUSR for s in scripts)
    for script in scripts:
        for seed in re.findall(r"-f\s+(\S+)", script.read_text(encoding="utf-8")):
            path = host_path(services["postgres"], seed)
            assert path is not None and path.is_file(), f"{script.name} loads {seed}, which is not mounted"


def test_compose_prometheus_scrapes_and_loads_rules(tmp_path: Path) -> None:
    services = compose()["services"]
    prometheus = services["prometheus"]
    config = host_path(prometheus, "/etc/prometheus/prometheus.yml")
    assert config is not None and config.is_file()
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    spec = yaml.safe_load(config.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
            for job in spec["scrape_configs"]}
    assert rule_job_names() | {"taskmedic-exporter", "taskmedic-remediator"} <= set(jobs)
    for job in ("taskmedic-exporter", "taskmedic-remediator"):
        (target,) = jobs[job]
        host, port = target.rsplit(":", 1)
        assert host in services and int(port) == listen_port(services[host]), target
    (am,) = [t for a in spec["alerting"]["alertmanagers"] for sc in a["static_configs"] for t in sc["targets"]]
    assert am.split(":")[0] in services
    rule_globs = []
    for pattern in spec["rule_files"]:
        host = host_path(prometheus, pattern)
        assert host is not None, f"{pattern} is not mounted into prometheus"
        assert host.parent == RULES, f"{pattern} does not map to rules/"
        assert sorted(host.parent.glob(host.name)) == rule_files()
        rule_globs.append(str(host))
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed")
    spec["rule_files"] = rule_globs
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    out = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_alertmanager_delivers_to_the_remediator(tmp_path: Path) -> None:
    services = compose()["services"]
    alertmanager = services["alertmanager"]
    path = host_path(alertmanager, flag_value(alertmanager["command"], "--config.file"))
    assert path is not None
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    hooks = [h for r in spec["receivers"] for h in r.get("webhook_configs", [])]
    (hook,) = hooks
    url = urlsplit(hook["url"])
    assert url.hostname == "remediator" and url.port == listen_port(services["remediator"]) and url.path == "/alerts"
    assert hook["send_resolved"] is True and hook["max_alerts"] > 0
    auth = hook["http_config"]["authorization"]
    assert "credentials" not in auth
    secret = auth["credentials_file"].removeprefix("/run/secrets/")
    assert secret in alertmanager["secrets"] and secret in services["remediator"]["secrets"]
    taskmedic = yaml.safe_load((COMPOSE_DIR / "taskmedic.yml").read_text(encoding="utf-8"))
    assert taskmedic["remediator"]["auth"]["bearer_token_file"] == f"/run/secrets/{secret}"
    routes = spec["route"].get("routes", [])
    assert any(r["receiver"] == "taskmedic-remediator" for r in routes)
    if shutil.which("amtool") is None:
        pytest.skip("amtool not installed")
    out = subprocess.run(["amtool", "check-config", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def flag_value(command: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in command if a.startswith(name + "=")]
    return value


def test_compose_grafana_provisioning_matches_mounts() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    providers = host_path(grafana, "/etc/grafana/provisioning/dashboards")
    assert providers is not None and providers.is_dir()
    paths = [p["options"]["path"] for f in providers.glob("*.y*ml")
             for p in (yaml.safe_load(f.read_text(encoding="utf-8")) or {}).get("providers", [])]
    assert paths, "no dashboard provider"
    for path in paths:
        host = host_path(grafana, path)
        assert host is not None and list(host.glob("*.json")), f"provider path {path} has no dashboards mounted"
    datasources = host_path(grafana, "/etc/grafana/provisioning/datasources")
    assert datasources is not None
    for f in datasources.glob("*.y*ml"):
        for ds in (yaml.safe_load(f.read_text(encoding="utf-8")) or {}).get("datasources", []):
            if ds.get("type") == "prometheus":
                url = urlsplit(ds["url"])
                assert url.hostname in services and url.port == 9090, ds["url"]


def test_compose_taskmedic_config_passes_check(tmp_path: Path) -> None:
    services = compose()["services"]
    dotenv = dotenv_example()
    text = (COMPOSE_DIR / "taskmedic.yml").read_text(encoding="utf-8")
    # Each process gets only its own environment: neither may need the other section's secrets.
    for name in ("remediator", "exporter"):
        env = {k: interpolate(str(v), dotenv) for k, v in services[name].get("environment", {}).items()}
        refs = env_refs(text)
        if name == "exporter":
            refs -= env_refs(yaml.safe_dump(yaml.safe_load(text).get("remediator")))
        assert refs <= set(env), f"{name} lacks {sorted(refs - set(env))}"
        if name == "remediator" and not remediator_available():
            continue
        config = text.replace("/usr/share/taskmedic/rules", str(RULES))
        token = tmp_path / "webhook_token"
        token.write_text("CHANGE_ME", encoding="utf-8")
        config = config.replace("/run/secrets/webhook_token", str(token))
        result = check_config(name, config, env, tmp_path)
        assert result.returncode == 0, f"{name}: {result.stderr}"


# --------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_multistage_non_root_and_installs_the_package() -> None:
    steps = dockerfile_instructions()
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    stages = [a.split()[0] for k, a in steps if k == "FROM"]
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], s) for s in stages]
    assert len(bases) >= 2 and all(b == "python:3.11-slim" for b in bases), bases
    final = steps[max(i for i, (k, _) in enumerate(steps) if k == "FROM"):]
    users = [a for k, a in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    uid = int(users[-1].split(":")[0])
    for _, _, container in taskmedic_containers():
        assert container.get("securityContext", {}).get("runAsUser", uid) == uid
    assert any(k == "RUN" and "pip install ." in a for k, a in steps)
    for k, a in steps:
        if k == "COPY" and not a.startswith("--from"):
            for source in a.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', pyproject, re.M)
    copied = {s.rstrip("/") for k, a in steps if k == "COPY" and not a.startswith("--from") for s in a.split()[:-1]}
    assert {"pyproject.toml", "exporter", "remediator"} <= copied
    if readme:
        assert readme.group(1) in copied, "pip install . needs the readme pyproject names"


def test_dockerfile_entrypoint_chooses_the_command(tmp_path: Path) -> None:
    steps = dict(dockerfile_instructions())
    entrypoint = json.loads(steps["ENTRYPOINT"])
    cmd = json.loads(steps["CMD"])
    assert cmd[0] == "exporter"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("taskmedic-exporter", "taskmedic-remediator"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\necho "{name}:$#:$*"\n', encoding="utf-8")
        stub.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}

    def run(*args: str) -> str:
        out = subprocess.run([*entrypoint, *args], capture_output=True, text=True, env=env, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert run("exporter", "--config", "/etc/x y.yml") == "taskmedic-exporter:2:--config /etc/x y.yml"
    assert run("remediator", "check", "--config", "c") == "taskmedic-remediator:3:check --config c"
    assert run(*cmd) == f"taskmedic-exporter:{len(cmd) - 1}:{' '.join(cmd[1:])}"
    assert run("echo", "plain") == "plain"


# --------------------------------------------------------------------------------------------
# systemd


UNITS = sorted(SYSTEMD.glob("*.service"))


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            assert current not in sections, f"{path.name}:{number}: duplicate section"
            sections[current] = []
            continue
        assert current is not None, f"{path.name}:{number}: key outside a section"
        assert "=" in line, f"{path.name}:{number}: not key=value"
        key, _, value = line.partition("=")
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key.strip()), f"{path.name}:{number}: bad key {key!r}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def test_systemd_units_exist() -> None:
    assert {u.name for u in UNITS} == {"taskmedic-exporter.service", "taskmedic-remediator.service"}


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_unit_structure(unit: Path) -> None:
    sections = parse_unit(unit)
    assert set(sections) == {"Unit", "Service", "Install"}
    service = dict(sections["Service"])  # the last value of a repeated key wins, as in systemd
    command = unit.stem.removeprefix("taskmedic-")
    exec_start = service["ExecStart"].split()
    assert exec_start[0].startswith("/") and exec_start[0].endswith(f"/taskmedic-{command}")
    assert flag(exec_start, "--config").startswith("/etc/")
    assert int(flag(exec_start, "--listen").rsplit(":", 1)[1]) == {"exporter": 9863, "remediator": 9864}[command]
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service.get("DynamicUser") == "yes" or service.get("User") == "taskmedic"
    assert service["EnvironmentFile"].lstrip("-").startswith("/etc/")
    assert service.get("CapabilityBoundingSet") == ""
    if command == "exporter":
        assert service.get("ProtectProc", "default") == "default", "process checks need to see other users' PIDs"
    assert dict(sections["Install"])["WantedBy"] == "multi-user.target"
    assert "Description" in dict(sections["Unit"])


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (structure is checked above)")
    # The units run /opt/taskmedic/venv/bin/...; verify needs an existing executable, so point
    # them at this interpreter's environment, where the same entry points are installed.
    venv = Path(sys.executable).parent.parent
    for name in ("taskmedic-exporter", "taskmedic-remediator"):
        if not (venv / "bin" / name).exists():
            pytest.skip(f"{name} is not installed in {venv}")
    copies = []
    for unit in UNITS:
        copy_path = tmp_path / unit.name
        copy_path.write_text(unit.read_text(encoding="utf-8").replace("/opt/taskmedic/venv", str(venv)),
                             encoding="utf-8")
        copies.append(str(copy_path))
    out = subprocess.run(["systemd-analyze", "verify", *copies], capture_output=True, text=True, timeout=120)
    # verify exits 0 on mere warnings (unknown key, unparsable value): any line about our units fails.
    ours = [line for line in (out.stdout + out.stderr).splitlines() if any(u.name in line for u in UNITS)]
    assert out.returncode == 0 and not ours, out.stdout + out.stderr
