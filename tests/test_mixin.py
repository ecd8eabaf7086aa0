"""The jsonnet mixin is the one source of the rules, the PrometheusRule and the dashboards."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.mixin import build

pytestmark = pytest.mark.skipif(shutil.which("jsonnet") is None, reason="jsonnet not installed (make deps)")


def overridden(config: str, field: str) -> Any:
    """A field of the mixin as a user overriding `_config` from their own jsonnet gets it."""
    code = f"((import 'mixin.libsonnet') + {{ _config+:: {config} }}).{field}"
    out = subprocess.run(["jsonnet", "-J", str(build.MIXIN), "-e", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_generated_files_are_up_to_date() -> None:
    stale = build.stale(build.outputs())
    assert not stale, f"run `make mixin`: {[str(p.relative_to(build.ROOT)) for p in stale]} out of date"


def test_a_hand_edit_of_a_generated_file_is_detected() -> None:
    files = build.outputs()
    disk = build.RULES_DIR / "disk.rules.yml"
    edited = dict(files)
    edited[disk] = files[disk].replace("< 0.05", "< 0.03")
    assert edited[disk] != files[disk]
    # stale() compares against the committed file: the committed one equals `files`, not `edited`.
    assert build.stale(edited) == [disk]
    assert build.main(["--check"]) == 0


def test_operator_overrides_a_threshold_in_one_place(tmp_path: Path) -> None:
    groups = overridden("{ diskFreeCriticalPercent: 15, exporterSelector: 'job=\"cape-node\"',"
                        " stuckTasksNotHealedFor: '2h' }", "prometheusAlerts.groups")
    rules = {(r["alert"], r["labels"]["severity"]): r for g in groups for r in g["rules"]}
    critical = rules[("TaskmedicDiskFillingUp", "critical")]
    assert 'taskmedic_disk_free_ratio{job="cape-node"} < 0.15' in critical["expr"]
    warning = rules[("TaskmedicDiskFillingUp", "warning")]
    assert warning["expr"].startswith('taskmedic_disk_free_ratio{job="cape-node"} < 0.4')
    not_healed = rules[("TaskmedicStuckTasksNotHealed", "critical")]
    assert not_healed["for"] == "2h" and "after 2h" in not_healed["annotations"]["summary"]
    # Every expression selects the overridden job; none keeps the default one.
    assert not any('job="taskmedic-exporter"' in r["expr"] for r in rules.values())
    path = tmp_path / "overridden.rules.yml"
    path.write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    check = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_runbook_url_pattern_is_configurable() -> None:
    groups = overridden("{ runbookURLPattern: 'https://wiki.example/taskmedic#%s' }", "prometheusAlerts.groups")
    urls = {r["annotations"]["runbook_url"] for g in groups for r in g["rules"]}
    assert "https://wiki.example/taskmedic#taskmedicstucktasks" in urls
    assert all(u.startswith("https://wiki.example/taskmedic#") for u in urls)


def test_dashboard_follows_the_config() -> None:
    boards = overridden("{ diskFreeCriticalPercent: 15, backupMaxAgeSeconds: 50 * 3600, showMultiCluster: true,"
                        " exporterSelector: 'job=\"cape-node\"' }", "grafanaDashboards")
    board = boards["taskmedic-overview.json"]
    panels = {p["title"]: p for p in board["panels"]}
    disk = panels["Disk free"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in disk] == [None, 0.15, 0.4]
    backup = panels["Age of the newest valid backup"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert backup[-1]["value"] == 50 * 3600
    assert 'taskmedic_tasks{job="cape-node", cluster=~"$cluster"' in panels["Tasks by status"]["targets"][0]["expr"]
    (cluster,) = [v for v in board["templating"]["list"] if v["name"] == "cluster"]
    assert cluster["hide"] == 0
    default = build.evaluate()["dashboards"]["taskmedic-overview.json"]
    (hidden,) = [v for v in default["templating"]["list"] if v["name"] == "cluster"]
    assert hidden["hide"] == 2, "no cluster variable shown to single-cluster users"


def test_dashboards_configmap_is_for_grafanas_sidecar() -> None:
    configmap = yaml.safe_load(build.DASHBOARDS_CONFIGMAP.read_text(encoding="utf-8"))
    assert configmap["kind"] == "ConfigMap"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    on_disk = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in build.DASHBOARDS_DIR.glob("*.json")}
    assert on_disk and {k: json.loads(v) for k, v in configmap["data"].items()} == on_disk
    assert len(build.DASHBOARDS_CONFIGMAP.read_bytes()) < 1024 * 1024, "a ConfigMap holds at most 1 MiB"
