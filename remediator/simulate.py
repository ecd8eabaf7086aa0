"""`taskmedic-remediator simulate`: what each alert would do, against the real databases.

Every matched playbook is executed as a dry run — its targets re-found and listed, SQL in a
transaction that is rolled back, Redis and files only counted, no process signalled, no command
run, no request sent — so the real counts are shown and nothing changes. The journal is not
used: cooldown and the circuit breaker depend on past runs and are only listed.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from remediator.alert import AlertInfo
from remediator.config import Playbook, Setup
from remediator.engine import Engine, Report
from remediator.matching import matching
from remediator.webhook import Alert, Payload, problems_of
from taskmedic.config.loader import ConfigError
from taskmedic.connections import Connections

_ALERTS = TypeAdapter(Payload | list[Alert])


def read_alerts(path: str) -> list[AlertInfo]:
    """A webhook payload, or a JSON list of alerts in the payload's shape."""
    try:
        parsed = _ALERTS.validate_json(Path(path).read_bytes())
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    except ValidationError as e:
        raise ConfigError([f"{path}: {p}" for p in problems_of(e)]) from None
    alerts = parsed.alerts if isinstance(parsed, Payload) else parsed
    return [a.info() for a in alerts]


def _guards(playbook: Playbook) -> list[str]:
    notes = []
    if playbook.cooldown:
        notes.append(f"cooldown {playbook.cooldown:g}s")
    if playbook.max_runs_per_hour is not None:
        notes.append(f"max_runs_per_hour {playbook.max_runs_per_hour}")
    return notes


async def simulate(setup: Setup, alerts: list[AlertInfo]) -> list[dict[str, Any]]:
    connections = Connections("taskmedic-remediator-simulate", setup.settings.statement_timeout)
    engine = Engine(setup.config.systems, connections, setup.settings.statement_timeout,
                    setup.config.disks, setup.config.backups)
    results = []
    try:
        for alert in alerts:
            runs = []
            for playbook in matching(setup.playbooks, alert):
                report: Report = await engine.execute(playbook, alert, dry_run=True)
                runs.append({"playbook": playbook.name, "not_evaluated": _guards(playbook), **asdict(report),
                             "targets": report.targets_json()})
            results.append({"alertname": alert.labels.get("alertname", ""), "fingerprint": alert.fingerprint,
                            "status": alert.status, "labels": dict(alert.labels), "runs": runs})
    finally:
        await connections.close()
    return results


def _step_lines(step: dict[str, Any]) -> list[str]:
    line = f"    step {step['name']!r} ({step['type']}): {step['outcome']}, {step['rows']} rows"
    lines = [line + (f" — {step['error']}" if step["error"] else "")]
    lines += [f"      {key}: {json.dumps(value, default=str)}" for key, value in step["detail"].items()]
    return lines


def _target_lines(targets: dict[str, Any]) -> list[str]:
    lines = [f"    targets ({targets['kind']}, {targets['subject']}): {targets['count']} rows"]
    lines += [f"      {json.dumps(row, default=str)}" for row in targets["rows"]]
    if targets["count"] > len(targets["rows"]):
        lines.append(f"      ... and {targets['count'] - len(targets['rows'])} more")
    return lines


def format_text(results: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for n, alert in enumerate(results, start=1):
        lines.append(f"alert {n}/{len(results)}: {alert['alertname']} ({alert['status']}, "
                     f"fingerprint {alert['fingerprint']})")
        if not alert["runs"]:
            lines.append("  no playbook matches")
        for run in alert["runs"]:
            lines.append(f"  playbook {run['playbook']}: {run['outcome']}"
                         + (f" — {run['error']}" if run["error"] else ""))
            if run["precheck"] is not None:
                lines.append(f"    precheck: {run['precheck']:g}")
            if run["targets"] is not None:
                lines += _target_lines(run["targets"])
            for step in run["steps"]:
                lines += _step_lines(step)
            if run["not_evaluated"]:
                lines.append(f"    not evaluated without the journal: {', '.join(run['not_evaluated'])}")
    return "\n".join(lines)
