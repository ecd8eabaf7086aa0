"""The kustomize base deploys taskmedic only; the CAPE example is an overlay. Both render with
`kubectl kustomize` and every rendered object passes the Kubernetes schemas."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

K8S = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
OLDEST_KUBERNETES = "1.29.0"


def kustomize(directory: Path) -> list[dict[str, Any]]:
    if shutil.which("kustomize"):
        command = ["kustomize", "build", str(directory)]
    elif shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(directory)]
    else:
        pytest.skip("neither kustomize nor kubectl is installed")
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def names(docs: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(d["kind"], d["metadata"]["name"]) for d in docs}


def test_base_deploys_taskmedic_only() -> None:
    base = kustomize(K8S / "base")
    for doc in base:
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "taskmedic" or doc["kind"] == "Namespace", (
            f"{doc['kind']}/{doc['metadata']['name']} is not part of taskmedic")
        assert "cape" not in doc["metadata"]["name"], f"{doc['kind']}/{doc['metadata']['name']} belongs in an overlay"
    assert {("Deployment", "taskmedic-remediator"), ("PrometheusRule", "taskmedic"),
            ("ConfigMap", "taskmedic-dashboards")} <= names(base)
    (remediator,) = [d for d in base if d["kind"] == "Deployment"]
    (container,) = remediator["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/taskmedic/taskmedic:0.1.0"
    # No system's credentials are wired into the base: the overlay's Secret keys become the env.
    assert "env" not in container and container["envFrom"] == [{"secretRef": {"name": "taskmedic-remediator"}}]


def test_cape_overlay_adds_the_engine_with_its_sidecar_to_the_base() -> None:
    base, overlay = kustomize(K8S / "base"), kustomize(K8S / "overlays" / "cape")
    assert names(base) < names(overlay)
    assert names(overlay) - names(base) == {("Deployment", "cape"), ("ConfigMap", "cape-taskmedic-exporter"),
                                            ("ConfigMap", "taskmedic-remediator"), ("Service", "taskmedic-exporter")}
    assert all(d["metadata"].get("namespace") == "taskmedic" for d in overlay if d["kind"] != "Namespace")
    (cape,) = [d for d in overlay if d["kind"] == "Deployment" and d["metadata"]["name"] == "cape"]
    containers = {c["name"]: c for c in cape["spec"]["template"]["spec"]["containers"]}
    # The sidecar shares the pod's PID namespace, so it runs as its own uid with no capabilities.
    sidecar = containers["taskmedic-exporter"]["securityContext"]
    assert cape["spec"]["template"]["spec"]["shareProcessNamespace"] is True
    assert sidecar["runAsUser"] != 0 and sidecar["capabilities"]["drop"] == ["ALL"]
    assert containers["taskmedic-exporter"]["image"] == "ghcr.io/taskmedic/taskmedic:0.1.0"


@pytest.mark.parametrize("directory", ["base", "overlays/cape"])
def test_rendered_objects_match_the_kubernetes_schemas(directory: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (test extra)")
    docs = [d for d in kustomize(K8S / directory) if not d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert docs
    for doc in docs:
        for version in (OLDEST_KUBERNETES, kv.latest_version()):
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as e:
                pytest.fail(f"{directory}: {doc['kind']}/{doc['metadata']['name']}: Kubernetes {version}: "
                            f"{'.'.join(str(p) for p in e.path)}: {e.message}")
