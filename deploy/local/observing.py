"""What the demo reads from the live stack: stuck series from the exporter, firing alerts and
dashboard queries from Prometheus, runs from the remediator."""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]


def http_json(url: str, headers: dict[str, str] | None = None) -> object:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=3) as r:
        return json.loads(r.read())


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=3) as r:
        return str(r.read().decode())


def stuck_series(exporter: str) -> dict[tuple[str, str], float]:
    out = {}
    for fam in text_string_to_metric_families(http_text(exporter + "/metrics")):
        for s in fam.samples:
            if s.name == "taskmedic_stuck_tasks":
                out[(s.labels["system"], s.labels["reason"])] = s.value
    return out


def firing_alerts(prometheus: str) -> set[tuple[str, str]]:
    data = http_json(prometheus + "/api/v1/alerts")
    assert isinstance(data, dict)
    return {(a["labels"].get("system", ""), a["labels"].get("reason", "")) for a in data["data"]["alerts"]
            if a["labels"].get("alertname") == "TaskmedicStuckTasks" and a["state"] == "firing"}


def runs(remediator: str, token: str) -> list[dict[str, object]]:
    data = http_json(remediator + "/runs?limit=200", {"Authorization": f"Bearer {token}"})
    if isinstance(data, dict):
        data = data.get("runs", [])
    assert isinstance(data, list)
    return data


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target and annotation in grafana/dashboards."""
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, object]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))  # type: ignore[arg-type]
            for target in panel.get("targets", []):  # type: ignore[attr-defined]
                if target.get("expr"):
                    out.append((str(panel.get("title")), target["expr"]))

    for f in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        board = json.loads(f.read_text())
        walk(board["panels"])
        out += [(f"annotation {a['name']}", a["expr"]) for a in board.get("annotations", {}).get("list", [])
                if a.get("expr")]
    return out


def empty_panels(prometheus: str) -> list[str]:
    """Panels whose query returns no series against the live stack (every variable = all)."""
    empty = []
    for title, expr in dashboard_queries():
        query = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
        query = re.sub(r"\$[a-z]\w*", ".*", query)  # $cluster, $job, $instance, $system
        data = http_json(f"{prometheus}/api/v1/query?query={urllib.parse.quote(query)}")
        assert isinstance(data, dict)
        if not data["data"]["result"]:
            empty.append(f"{title}: {expr}")
    return empty
