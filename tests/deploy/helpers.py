"""What the deployment tests share: where the artefacts are, how to load them, and how to run
the commands' own `check` on a config."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
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
