"""The shipped Grafana dashboards: selectable per cluster/job/instance, no double counting, rates
that follow Grafana's interval, and panels on the same series as the alerts they explain."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
EXPORTER_GAUGES = ("taskmedic_tasks", "taskmedic_stuck_tasks", "taskmedic_queue_depth", "taskmedic_queue_unacked")


def panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for panel in items:
        out.append(panel)
        out += panels(panel.get("panels", []))
    return out


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    return [(str(p.get("title")), t["expr"]) for p in panels(board["panels"]) for t in p.get("targets", [])
            if t.get("expr")]


def alert_expr(name: str) -> str:
    for path in (ROOT / "rules").glob("*.rules.yml"):
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") == name:
                    return str(rule["expr"])
    raise AssertionError(f"no alert {name}")


def test_dashboards_have_cluster_job_and_instance_variables() -> None:
    assert DASHBOARDS
    for path in DASHBOARDS:
        variables = {v["name"]: v for v in json.loads(path.read_text(encoding="utf-8"))["templating"]["list"]}
        assert {"datasource", "cluster", "job", "instance", "system"} <= set(variables), path.name
        for name in ("cluster", "job", "instance"):
            assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*", name
        # Each variable narrows the next: instances of the chosen jobs, systems of those instances.
        assert 'job=~"$job"' in variables["instance"]["query"]
        assert 'instance=~"$instance"' in variables["system"]["query"]


def test_every_query_follows_the_variables_and_rate_interval() -> None:
    for path in DASHBOARDS:
        for title, expr in queries(json.loads(path.read_text(encoding="utf-8"))):
            for selector in re.findall(r"\b(taskmedic_\w+)\{([^}]*)\}", expr):
                metric, matchers = selector
                assert 'cluster=~"$cluster"' in matchers, f"{title}: {metric} ignores $cluster"
                if "remediation" not in metric and "webhook" not in metric and "circuit" not in metric:
                    assert 'job=~"$job"' in matchers and 'instance=~"$instance"' in matchers, f"{title}: {metric}"
            if "rate(" in expr or "increase(" in expr:
                assert "[$__rate_interval]" in expr, title


def test_two_exporters_watching_one_database_are_not_added_up() -> None:
    """Two exporter replicas (or a sidecar and a central exporter) report the same tasks: a sum
    would double them, the maximum does not."""
    for path in DASHBOARDS:
        for title, expr in queries(json.loads(path.read_text(encoding="utf-8"))):
            for gauge in EXPORTER_GAUGES:
                if re.search(rf"\b{gauge}\{{", expr):
                    assert not re.search(r"\bsum\b", expr), f"{title}: sums {gauge} across exporters"


def test_backup_age_panel_shows_the_series_its_alert_fires_on() -> None:
    board = json.loads((ROOT / "grafana" / "dashboards" / "taskmedic-overview.json").read_text(encoding="utf-8"))
    (panel,) = [p for p in panels(board["panels"]) if "backup" in str(p.get("title")).lower()
                and "age" in str(p.get("title")).lower()]
    (target,) = panel["targets"]
    assert "taskmedic_backup_last_valid_timestamp_seconds" in alert_expr("TaskmedicBackupTooOld")
    assert "taskmedic_backup_last_valid_timestamp_seconds" in target["expr"]
    assert "last_modified" not in target["expr"]
    threshold = max(s["value"] or 0 for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"])
    assert f"> {threshold // 3600} * 3600" in alert_expr("TaskmedicBackupTooOld"), "red line and alert disagree"
