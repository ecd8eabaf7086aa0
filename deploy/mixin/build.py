"""Generate the alert rules, the dashboards and their Kubernetes objects from the jsonnet mixin.

deploy/mixin is the single source: `_config` in config.libsonnet holds every threshold, selector
and the runbook URL pattern. This writes

    rules/*.rules.yml                                   one file per alert group (promtool-tested)
    grafana/dashboards/*.json                           the dashboards (Grafana file provisioning)
    deploy/kubernetes/base/grafana-dashboards.yaml      the same dashboards for Grafana's sidecar
    deploy/kubernetes/base/prometheusrule.yaml          the rules for the Prometheus Operator

    python -m deploy.mixin.build           # rewrite them (`make mixin`)
    python -m deploy.mixin.build --check   # exit 1 naming every file that is out of date

jsonnet comes from Debian (`apt-get install jsonnet`, done by `make deps`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from deploy.kubernetes import generate_prometheusrule

MIXIN = Path(__file__).resolve().parent
ROOT = MIXIN.parents[1]
RULES_DIR = ROOT / "rules"
DASHBOARDS_DIR = ROOT / "grafana" / "dashboards"
K8S_BASE = ROOT / "deploy" / "kubernetes" / "base"
DASHBOARDS_CONFIGMAP = K8S_BASE / "grafana-dashboards.yaml"
PROMETHEUSRULE = K8S_BASE / "prometheusrule.yaml"

RULE_KEY_ORDER = ("alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations")
ANNOTATION_ORDER = ("summary", "description", "runbook_url")

RULES_HEADER = """\
# GENERATED from the jsonnet mixin in deploy/mixin by `make mixin`. DO NOT EDIT: thresholds are
# in deploy/mixin/config.libsonnet, the rules in deploy/mixin/alerts/ (the tests fail while this
# file is stale). Unit tests: rules/tests/ (cd rules/tests && promtool test rules *.yml).
#
"""

CONFIGMAP_HEADER = """\
# GENERATED from the jsonnet mixin in deploy/mixin by `make mixin`. DO NOT EDIT.
#
# taskmedic's dashboards for Grafana's dashboard sidecar (kube-prometheus-stack:
# grafana.sidecar.dashboards.enabled), which loads every ConfigMap labelled grafana_dashboard=1.
"""


class MixinError(Exception):
    pass


def evaluate(mixin_dir: Path = MIXIN) -> dict[str, Any]:
    """The mixin's render.jsonnet as data: {"rules": {file: {header, groups}}, "dashboards": {...}}."""
    jsonnet = shutil.which("jsonnet")
    if jsonnet is None:
        raise MixinError("jsonnet is not installed: apt-get install jsonnet (or make deps)")
    result = subprocess.run([jsonnet, "-J", str(mixin_dir), str(mixin_dir / "render.jsonnet")],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise MixinError(result.stderr.strip())
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _ordered(mapping: dict[str, Any], order: tuple[str, ...]) -> dict[str, Any]:
    return {**{k: mapping[k] for k in order if k in mapping}, **{k: v for k, v in mapping.items() if k not in order}}


def _rule(rule: dict[str, Any]) -> dict[str, Any]:
    out = _ordered(rule, RULE_KEY_ORDER)
    if "annotations" in out:
        out["annotations"] = _ordered(out["annotations"], ANNOTATION_ORDER)
    return out


def _yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=generate_prometheusrule._Dumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=False, width=4096)


def rules_file(header: str, groups: list[dict[str, Any]]) -> str:
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.rstrip("\n").split("\n"))
    # A group's own evaluation interval (when it has one) comes before its rules, as people write it.
    body = [{"name": g["name"], **({"interval": g["interval"]} if "interval" in g else {}),
             "rules": [_rule(r) for r in g["rules"]]} for g in groups]
    # A blank line between rules, as people write them.
    return RULES_HEADER + comment + _yaml({"groups": body}).replace("\n  - alert: ", "\n\n  - alert: ").replace(
        "rules:\n\n", "rules:\n")


def dashboards_configmap(dashboards: dict[str, str]) -> str:
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "taskmedic-dashboards",
            "labels": {
                "grafana_dashboard": "1",
                "app.kubernetes.io/name": "taskmedic",
                "app.kubernetes.io/part-of": "taskmedic",
                "app.kubernetes.io/component": "dashboards",
            },
            # Honoured when the sidecar sets folderAnnotation: grafana_folder.
            "annotations": {"grafana_folder": "taskmedic"},
        },
        "data": dashboards,
    }
    return CONFIGMAP_HEADER + _yaml(configmap)


def outputs(mixin_dir: Path = MIXIN) -> dict[Path, str]:
    """Every generated file and its text."""
    data = evaluate(mixin_dir)
    files: dict[Path, str] = {}
    for name, doc in sorted(data["rules"].items()):
        files[RULES_DIR / name] = rules_file(doc["header"], doc["groups"])
    dashboards = {name: json.dumps(board, indent=2, ensure_ascii=False) + "\n"
                  for name, board in sorted(data["dashboards"].items())}
    files.update({DASHBOARDS_DIR / name: text for name, text in dashboards.items()})
    files[DASHBOARDS_CONFIGMAP] = dashboards_configmap(dashboards)
    # The PrometheusRule is derived from the rules files exactly as generate_prometheusrule does it.
    with tempfile.TemporaryDirectory() as tmp:
        for path, text in files.items():
            if path.parent == RULES_DIR:
                (Path(tmp) / path.name).write_text(text, encoding="utf-8")
        files[PROMETHEUSRULE] = generate_prometheusrule.render(Path(tmp))
    return files


def stale(files: dict[Path, str]) -> list[Path]:
    """Generated files whose committed text differs, plus rules files the mixin no longer makes."""
    out = [p for p, text in files.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
    out += [p for p in sorted(RULES_DIR.glob("*.rules.yml")) if p not in files]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file is out of date")
    args = parser.parse_args(argv)
    try:
        files = outputs()
    except MixinError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.check:
        out_of_date = stale(files)
        for path in out_of_date:
            print(f"{path.relative_to(ROOT)} is out of date: run `make mixin`", file=sys.stderr)
        return 1 if out_of_date else 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
