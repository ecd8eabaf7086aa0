"""Paging that trusts the healing: the shipped Alertmanager routing, tested with amtool and a real
Alertmanager.

An alert that a playbook the deployment's remediator runs heals goes to the remediator only;
people are paged for everything else and when the healing did not work; `info` never pages;
stacked disk alerts page once.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.services import free_port, running, wait_http

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "rules"
PLAYBOOKS = RULES / "playbooks"
COMPOSE_CONFIG = ROOT / "deploy" / "compose" / "alertmanager.yml"
K8S_CONFIG = ROOT / "deploy" / "kubernetes" / "alertmanager-receiver.yml"

pytestmark = pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool not installed (make deps)")



@contextmanager
def alertmanager(config: Path, tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager on `config`, ready; its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = ["prometheus-alertmanager", f"--config.file={config}", f"--storage.path={tmp_path}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="]
    with running(argv, tmp_path / "alertmanager.log"):
        wait_http(f"{url}/-/ready")
        yield url

def compose_playbooks() -> list[str]:
    config = yaml.safe_load((ROOT / "deploy" / "compose" / "taskmedic.yml").read_text(encoding="utf-8"))
    return [Path(p).name for p in config["remediator"]["playbooks"]]


def kubernetes_playbooks() -> list[str]:
    path = ROOT / "deploy" / "kubernetes" / "overlays" / "cape" / "remediator-configmap.yaml"
    configmap = yaml.safe_load(path.read_text(encoding="utf-8"))
    config = yaml.safe_load(configmap["data"]["taskmedic.yml"])
    return [Path(p).name for p in config["remediator"]["playbooks"]]


# Each shipped Alertmanager config and the playbooks its remediator runs.
DEPLOYMENTS = {"compose": (COMPOSE_CONFIG, compose_playbooks), "kubernetes": (K8S_CONFIG, kubernetes_playbooks)}


def receivers(config: Path, labels: dict[str, str]) -> list[str]:
    """The receivers Alertmanager routes an alert with these labels to, as amtool reports them."""
    out = subprocess.run(["amtool", "config", "routes", "test", f"--config.file={config}",
                          *(f"{k}={v}" for k, v in labels.items())], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return sorted(out.stdout.strip().split(","))


def severities(alertname: str) -> set[str]:
    """The severities the shipped rules give an alert."""
    found = set()
    for path in RULES.glob("*.rules.yml"):
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            found |= {r["labels"]["severity"] for r in group["rules"] if r.get("alert") == alertname}
    return found


def sample_labels(match: dict[str, str]) -> dict[str, str]:
    """Alert labels a playbook's `match:` accepts ("~regex" values: the first alternative)."""
    labels = {}
    for key, value in match.items():
        if value.startswith("~"):
            sample = value[1:].split("|")[0]
            assert re.fullmatch(value[1:], sample), f"{key}: cannot derive an example from {value}"
            value = sample
        labels[key] = value
    return labels


def shipped_playbooks() -> list[tuple[str, dict[str, str]]]:
    return [(p.name, yaml.safe_load(p.read_text(encoding="utf-8"))["match"]) for p in sorted(PLAYBOOKS.glob("*.yml"))]


@pytest.mark.parametrize("config", [COMPOSE_CONFIG, K8S_CONFIG], ids=["compose", "kubernetes"])
def test_alertmanager_config_is_valid(config: Path) -> None:
    out = subprocess.run(["amtool", "check-config", str(config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_and_kubernetes_route_and_inhibit_alike() -> None:
    compose, kubernetes = (yaml.safe_load(p.read_text(encoding="utf-8")) for p in (COMPOSE_CONFIG, K8S_CONFIG))
    assert compose["route"] == kubernetes["route"]
    assert compose["inhibit_rules"] == kubernetes["inhibit_rules"]
    assert [r["name"] for r in compose["receivers"]] == [r["name"] for r in kubernetes["receivers"]]


@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_a_healed_alert_goes_to_the_remediator_only_and_others_page(deployment: str) -> None:
    config, enabled = DEPLOYMENTS[deployment]
    runs = enabled()
    assert runs, "the example remediator runs no playbook"
    for name, match in shipped_playbooks():
        labels = sample_labels(match)
        for severity in severities(labels["alertname"]) or {"warning"}:
            got = receivers(config, {**labels, "severity": severity})
            page = ["quiet"] if severity == "info" else ["people"]
            expected = ["taskmedic-remediator"] if name in runs else page
            assert got == expected, f"{deployment}: {name} ({severity}) routed to {got}, expected {expected}"


@pytest.mark.parametrize("config", [COMPOSE_CONFIG, K8S_CONFIG], ids=["compose", "kubernetes"])
def test_people_are_paged_when_healing_did_not_work(config: Path) -> None:
    healed = {"system": "cape", "status": "pending", "reason": "pending_too_long"}
    pages = [
        {"alertname": "TaskmedicStuckTasksNotHealed", "severity": "critical", **healed},
        {"alertname": "TaskmedicRemediationFailing", "severity": "warning", "playbook": "cape-fail-stale-pending"},
        {"alertname": "TaskmedicRemediationRefused", "severity": "warning", "playbook": "cape-fail-stale-pending"},
        {"alertname": "TaskmedicPlaybookCircuitOpen", "severity": "warning", "playbook": "cape-fail-stale-pending"},
        {"alertname": "TaskmedicRemediationPausedTooLong", "severity": "warning", "scope": "*"},
        {"alertname": "TaskmedicWebhookErrors", "severity": "warning"},
        {"alertname": "TaskmedicRemediatorDown", "severity": "warning"},
        {"alertname": "TaskmedicBackupInvalidNotHealed", "severity": "critical", "backup": "sysreptor"},
        # The same alert a playbook heals, but for a reason no playbook here handles.
        {"alertname": "TaskmedicStuckTasks", "severity": "warning", "system": "cape", "status": "running",
         "reason": "running_too_long"},
        {"alertname": "TaskmedicDiskAlmostOutOfSpace", "severity": "critical", "path": "/opt/CAPEv2/storage"},
    ]
    for labels in pages:
        assert receivers(config, labels) == ["people"], labels
    # The alert being healed itself does not page.
    assert receivers(config, {"alertname": "TaskmedicStuckTasks", "severity": "warning", **healed}) == [
        "taskmedic-remediator"]
    assert receivers(config, {"alertname": "TaskmedicDiskSpaceLow", "severity": "info", "path": "/srv"}) == ["quiet"]


def uncommented_examples(config: Path) -> str:
    """The config as an operator enables the commented example routes: `# ` removed from them."""
    return re.sub(r"(?m)^    # (- matchers:|  <<:|  group_\w+:)", r"    \1", config.read_text(encoding="utf-8"))


def example_playbooks(text: str) -> list[str]:
    return [name for name, match in shipped_playbooks() if f'alertname="{match["alertname"]}"' in text
            and all(f'{k}="{v}"' in text for k, v in sample_labels(match).items())]


@pytest.mark.parametrize("config", [COMPOSE_CONFIG, K8S_CONFIG], ids=["compose", "kubernetes"])
def test_the_example_routes_work_once_uncommented(config: Path, tmp_path: Path) -> None:
    """Each commented route, uncommented, sends its playbook's alert to the remediator alone with
    its own matchers and its own timings (Alertmanager merges `<<:` in place)."""
    enabled = tmp_path / "alertmanager.yml"
    enabled.write_text(uncommented_examples(config), encoding="utf-8")
    books = example_playbooks(enabled.read_text(encoding="utf-8"))
    assert {"cape-free-disk.yml", "sidekiq-capture-expiring-jobs.yml"} <= set(books)
    for name, match in shipped_playbooks():
        if name in books:
            labels = sample_labels(match)
            for severity in severities(labels["alertname"]):
                assert receivers(enabled, {**labels, "severity": severity}) == ["taskmedic-remediator"], name
    with alertmanager(enabled, tmp_path) as url, \
            urllib.request.urlopen(f"{url}/api/v2/status", timeout=10) as response:
        loaded = yaml.safe_load(json.load(response)["config"]["original"])  # as Alertmanager parsed it
    routes = {tuple(sorted(r["matchers"])): r for r in loaded["route"]["routes"]}
    sidekiq = routes[('alertname="TaskmedicHeldWorkExpiring"', 'reason="expiring"', 'system="sidekiq"')]
    assert (sidekiq["receiver"], sidekiq["group_wait"], sidekiq["group_interval"]) == (
        "taskmedic-remediator", "2s", "5s")


# --------------------------------------------------------------------------------------------
# Inhibition, in a real Alertmanager


def post_alerts(url: str, alerts: list[dict[str, str]]) -> None:
    now = dt.datetime.now(dt.UTC)
    body = [{"labels": labels, "startsAt": now.isoformat(), "endsAt": (now + dt.timedelta(hours=1)).isoformat()}
            for labels in alerts]
    request = urllib.request.Request(f"{url}/api/v2/alerts", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def alert_states(url: str) -> dict[tuple[str, str, str], dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=10) as response:
        alerts = json.load(response)
    return {(a["labels"]["alertname"], a["labels"]["severity"], a["labels"]["path"]): a["status"] for a in alerts}


def test_stacked_disk_alerts_page_once(tmp_path: Path) -> None:
    with alertmanager(COMPOSE_CONFIG, tmp_path) as url:
        common = {"job": "taskmedic-exporter", "instance": "exporter:9863"}
        post_alerts(url, [
            # /data: critical and warning filling up, and almost out, all at once.
            {"alertname": "TaskmedicDiskFillingUp", "severity": "warning", "path": "/data", **common},
            {"alertname": "TaskmedicDiskFillingUp", "severity": "critical", "path": "/data", **common},
            {"alertname": "TaskmedicDiskAlmostOutOfSpace", "severity": "critical", "path": "/data", **common},
            {"alertname": "TaskmedicDiskSpaceLow", "severity": "info", "path": "/data", **common},
            # /logs: only the warning; /spool: critical mutes the warning of its own path only.
            {"alertname": "TaskmedicDiskFillingUp", "severity": "warning", "path": "/logs", **common},
            {"alertname": "TaskmedicDiskInodesFillingUp", "severity": "warning", "path": "/spool", **common},
            {"alertname": "TaskmedicDiskInodesFillingUp", "severity": "critical", "path": "/spool", **common},
        ])
        states = alert_states(url)
    inhibited = {key for key, status in states.items() if status["inhibitedBy"]}
    assert inhibited == {
        ("TaskmedicDiskFillingUp", "warning", "/data"),
        ("TaskmedicDiskFillingUp", "critical", "/data"),
        ("TaskmedicDiskInodesFillingUp", "warning", "/spool"),
    }, states
    # What pages for /data is the almost-out alert; the cleanup trigger still reaches its route.
    assert states[("TaskmedicDiskAlmostOutOfSpace", "critical", "/data")]["state"] == "active"
    assert states[("TaskmedicDiskSpaceLow", "info", "/data")]["state"] == "active"
