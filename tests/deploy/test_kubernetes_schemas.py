"""Kubernetes manifests against the Kubernetes JSON schemas (kubernetes-validate, strict:
unknown fields fail), and the Prometheus Operator's resources against the subset of its CRD
schemas they use."""

from __future__ import annotations

import copy
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import (
    CRD_GROUP,
    IMAGE,
    K8S,
    NOT_RESOURCES,
    OLDEST_KUBERNETES,
    doc_id,
    kustomization,
    manifests,
    of_kind,
)


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
