"""The demo's configuration files: taskmedic's (the contract's minimal config with 1 s
intervals), the shipped alert rules with `for:` cut to seconds, Prometheus' and Alertmanager's."""

from __future__ import annotations

import os
import re
import time
import zipfile
from pathlib import Path

from deploy.local.servers import PostgresServer, RedisServer

ROOT = Path(__file__).resolve().parents[2]


def write_backups(root: Path) -> Path:
    """Two good SysReptor backups, a day apart, in the directory the config watches."""
    backups = root / "backups"
    backups.mkdir(exist_ok=True)
    for day, age in ((21, 2 * 86400), (22, 86400)):
        path = backups / f"sysreptor-2026-11-{day}.zip"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("backup.jsonl", "{}\n" * 10_000)
        os.utime(path, (time.time() - age, time.time() - age))
    return backups


ENGINE_PROFILES = ("dramatiq", "bullmq", "sidekiq", "arq")  # Redis databases 4-7 of the demo's server


def write_config(root: Path, pg: PostgresServer, rs: RedisServer) -> Path:
    dsn = pg.dsn
    cfg = root / "taskmedic.yml"
    storage = root / "storage"
    storage.mkdir(exist_ok=True)
    backups = write_backups(root)
    engines = "".join(f"  {name}:\n    profile: {name}\n    redis: {rs.url(db)}\n"
                      for db, name in enumerate(ENGINE_PROFILES, start=4))
    cfg.write_text(f"""# Written by `make demo`: the contract's minimal config plus 1 s intervals.
systems:
  cape:
    profile: cape
    database: {dsn("cape")}
    interval: 1s
  timesketch:
    profile: timesketch
    database: {dsn("timesketch")}
    redis: {rs.url(3)}   # Timesketch's Celery broker: its workers are asked what they import
    interval: 1s
  harbor:
    profile: harbor
    database: {dsn("harbor")}
    redis: {rs.url(0)}
    interval: 1s
  scanner:
    profile: scanner
    database: {dsn("scanner")}
    interval: 1s
  celery:
    profile: celery
    redis: {rs.url(1)}
    interval: 1s
  rq:
    profile: rq
    redis: {rs.url(2)}
    interval: 1s
  # The job engines described by configuration: watched, idle here (their incidents are healed
  # with real workers in tests/exporter/test_engine_*.py and tests/remediator/test_engine_*.py).
{engines}disks:
  - path: {storage}
    interval: 1s
backups:
  sysreptor:
    path: {backups}
    pattern: "*.zip"
    interval: 1s
remediator:
  journal: {dsn("journal")}
  playbooks: {ROOT / "rules" / "playbooks"}
  auth:
    bearer_token: ${{TASKMEDIC_WEBHOOK_TOKEN}}
  poll_interval: 200ms
""")
    return cfg


def write_rules(root: Path) -> Path:
    """The shipped rules with every `for:` cut to 2 s, so the demo fires in seconds."""
    out = root / "rules"
    out.mkdir(exist_ok=True)
    for f in (ROOT / "rules").glob("*.rules.yml"):
        (out / f.name).write_text(re.sub(r"(?m)^(\s+for:\s*)\S+\s*$", r"\g<1>2s", f.read_text()))
    return out


def write_prometheus(root: Path, rules: Path, ports: dict[str, int]) -> Path:
    path = root / "prometheus.yml"
    path.write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{rules}/*.rules.yml"]
alerting:
  alertmanagers:
    - static_configs: [{{targets: ["127.0.0.1:{ports['alertmanager']}"]}}]
scrape_configs:
  - job_name: taskmedic-exporter
    static_configs: [{{targets: ["127.0.0.1:{ports['exporter']}"]}}]
  - job_name: taskmedic-remediator
    static_configs: [{{targets: ["127.0.0.1:{ports['remediator']}"]}}]
""")
    return path


def write_alertmanager(root: Path, token: str, remediator_url: str) -> Path:
    token_file = root / "webhook-token"
    token_file.write_text(token)
    path = root / "alertmanager.yml"
    path.write_text(f"""route:
  receiver: taskmedic
  group_by: [alertname, system, status, reason, path, backup, queue]
  group_wait: 1s
  group_interval: 2s
  repeat_interval: 1h
receivers:
  - name: taskmedic
    webhook_configs:
      - url: {remediator_url}/alerts
        send_resolved: true
        http_config:
          authorization:
            credentials_file: {token_file}
""")
    return path
