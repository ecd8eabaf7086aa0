"""Remediator test kit: a CAPE database in its real shape, a journal database, config and
playbook files written the way an operator writes them, and Alertmanager-shaped payloads."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import ValidationError

from remediator.config import Check, Playbook, Setup, load_setup
from remediator.engine import Engine, Report
from remediator.labels import alert_variables, templates
from remediator.webhook import Alert
from taskmedic.config.loader import format_path
from taskmedic.connections import Connections
from tests.conftest import Database
from tests.polling import await_until
from tests.services import PostgresServer

TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# The conformance playbook's shape: the stale pending CAPE tasks the exporter's rule finds → failed_analysis.
FAIL_STALE = """
name: cape-fail-stale-pending
match:
  alertname: TaskmedicStuckTasks
  system: cape
  reason: pending_too_long
on: firing
targets: stuck
steps:
  - name: fail stale pending tasks
    sql:
      system: cape
      statement: "update tasks set status = 'failed_analysis' where id = any($1) and status = 'pending'"
      params: ["{{ targets.ids }}"]
      max_rows: 100
verify: targets
"""


def trusting_labels(playbook: str) -> str:
    """The playbook opting in (`label_text`) for every key where it reads a label. For tests of a
    step's own handling of hostile values (escaping, binding, refusal) — defence in depth behind
    `check`, which refuses these playbooks as shipped."""
    try:
        book = Playbook.model_validate(yaml.safe_load(playbook))
    except ValidationError:
        return playbook  # invalid anyway: the test is about that error
    places = [t for i, step in enumerate(book.steps) for t in templates(step.spec, ("steps", i, step.kind))]
    for name in ("precheck", "verify"):
        check = getattr(book, name)
        if isinstance(check, Check):
            places += templates(check, (name,))
    keys = [format_path(path) for path, text in places if alert_variables(text)]
    return playbook + (f"label_text: {json.dumps(keys)}\n" if keys else "")


def seed_cape(db: Database, stale: int = 5, fresh: int = 2, reported: int = 0) -> None:
    db.load("cape.sql")
    insert = ("insert into tasks (target, category, memory, enforce_timeout, clock, added_on, completed_on, status,"
              " timedout) select 'sample.exe', 'file', false, false, localtimestamp, {added}, {completed},"
              " '{status}', false from generate_series(1, {n})")
    for n, status, added, completed in (
            (stale, "pending", "localtimestamp - interval '3 days'", "null"),
            (fresh, "pending", "localtimestamp - interval '5 seconds'", "null"),
            (reported, "reported", "localtimestamp - interval '10 days'", "localtimestamp - interval '9 days'")):
        if n:
            db.sql(insert.format(n=n, status=status, added=added, completed=completed))


def seed_cape_utc_on(db: Database, zone: str) -> None:
    """CAPE as it writes by default (naive UTC) into a database whose TimeZone is `zone`: a task
    pending for 3 hours (stuck.exe) and one for 40 minutes (fresh.exe)."""
    db.load("cape.sql")
    db.sql(f"alter database {db.name} set timezone = '{zone}'")
    db.sql("""insert into tasks (target, category, memory, enforce_timeout, clock, added_on, status, timedout)
              select target, 'file', false, false, now(), (now() at time zone 'UTC') - age, 'pending', false
              from (values ('stuck.exe', interval '3 hours'), ('fresh.exe', interval '40 min')) v(target, age)
              order by age desc""")


def count(db: Database, where: str) -> int:
    return int(db.sql(f"select count(*) from tasks where {where}"))


def alert(fingerprint: str = "f1", starts: str = "2026-11-22T10:00:00Z", status: str = "firing",
          **labels: str) -> dict[str, Any]:
    lab = {"alertname": "TaskmedicStuckTasks", "system": "cape", "reason": "pending_too_long", **labels}
    return {"status": status, "labels": lab, "annotations": {"summary": "stuck"}, "startsAt": starts,
            "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus:9090/graph",
            "fingerprint": fingerprint}


def payload(*alerts: dict[str, Any]) -> dict[str, Any]:
    alerts = alerts or (alert(),)
    return {"version": "4", "groupKey": '{}:{alertname="TaskmedicStuckTasks"}', "truncatedAlerts": 0,
            "status": alerts[0]["status"], "receiver": "taskmedic",
            "groupLabels": {"alertname": "TaskmedicStuckTasks"}, "commonLabels": alerts[0]["labels"],
            "commonAnnotations": {}, "externalURL": "http://alertmanager:9093", "alerts": list(alerts)}


@dataclass
class Site:
    """One operator's setup: a CAPE database, a journal database, Redis, files and config."""

    tmp: Path
    cape: Database
    journal: Database
    redis_url: str
    settings: dict[str, Any] = field(default_factory=dict)

    def write(self, *playbooks: str, systems: str = "", sections: str = "", **settings: Any) -> Path:
        """Config and playbook files; `systems` adds entries under systems:, `sections` top-level
        sections (disks:, backups:)."""
        book_dir = self.tmp / "playbooks"
        book_dir.mkdir(exist_ok=True)
        for old in book_dir.glob("*.yml"):
            old.unlink()
        for i, text in enumerate(playbooks):
            (book_dir / f"p{i}.yml").write_text(textwrap.dedent(text))
        remediator = {"journal": self.journal.dsn, "playbooks": str(book_dir), "auth": {"bearer_token": TOKEN},
                      "lease": 3, "poll_interval": 0.1, "workers": 2, "shutdown_grace": 5, **settings}
        remediator = {key: value for key, value in remediator.items() if value is not None}  # None: leave it out
        config = (f"systems:\n  cape:\n    profile: cape\n    database: {self.cape.dsn}\n"
                  f"  jobs:\n    profile: celery\n    redis: {self.redis_url}\n"
                  + systems + sections
                  + "remediator: " + json.dumps(remediator) + "\n")
        path = self.tmp / "taskmedic.yml"
        path.write_text(config)
        return path

    def setup(self, *playbooks: str, **settings: Any) -> Setup:
        return load_setup(str(self.write(*playbooks, **settings)))

    def journal_rows(self, columns: str = "playbook, fingerprint, outcome") -> list[str]:
        out = self.journal.sql(f"select {columns} from taskmedic_runs order by id")
        return out.splitlines() if out else []


Client = TestClient[web.Request, web.Application]
StartApp = Callable[..., Awaitable[Client]]


async def post(client: Client, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with client.post("/alerts", data=data, headers={"Content-Type": "application/json",
                                                          **(AUTH if headers is None else headers)}) as r:
        return r.status, await r.json(content_type=None)


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def settled(site: Site, n: int = 1, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Wait until `n` journal rows are done; returns every row (oldest first)."""
    async def runs() -> list[asyncpg.Record]:
        return await fetch(site.journal.dsn, "select * from taskmedic_runs order by id")

    rows = await await_until(runs, timeout, f"{n} runs to be done",
                             done=lambda rows: sum(r["status"] == "done" for r in rows) >= n)
    done = [dict(r) for r in rows]
    for row in done:
        for key in ("steps", "labels", "history"):
            if isinstance(row.get(key), str):
                row[key] = json.loads(row[key])
    return done


async def execute(setup: Setup, labels: dict[str, str] | None = None, dry_run: bool = False,
                  playbook: str | None = None) -> Report:
    """Run one playbook in-process through the engine (no webhook, no journal)."""
    info = Alert.model_validate(alert(**(labels or {}))).info()
    connections = Connections("taskmedic-tests", 10.0)
    book = setup.playbook(playbook) if playbook else setup.playbooks[0]
    assert book is not None
    try:
        engine = Engine(setup.config.systems, connections, 10.0, setup.config.disks, setup.config.backups)
        return await engine.execute(book, info, dry_run)
    finally:
        await connections.close()


SHIPPED = Path(__file__).parents[2] / "rules" / "playbooks"


ENGINE = "scan-engine"  # the executable the scanner system's rules recognise as its engine (tests/engines.py)


# arq's profile waits out arq's default health_check_interval (1 h) before a missing health key
# condemns its queue; a deployment that rewrites it every second or so can judge in 2 s
ENGINE_TIMINGS = {"arq": ", queues: {engine: {heartbeat: {dead_after: 2s}}}"}


def shipped(site: Site, pg: PostgresServer, edit: Callable[[str], str] = str,
            engine: str = ENGINE, sections: str = "") -> tuple[Setup, Database]:
    """The shipped playbooks (each through `edit`) with a config naming one system per built-in
    profile, by its name (the demo's and the README's convention)."""
    timesketch = Database(pg, pg.create_database("timesketch"))
    systems = (f"  timesketch: {{profile: timesketch, database: '{timesketch.dsn}', redis: '{site.redis_url}'}}\n"
               f"  harbor: {{profile: harbor, database: '{site.cape.dsn}', redis: '{site.redis_url}'}}\n"
               f"  scanner: {{profile: scanner, database: '{site.cape.dsn}',\n"
               f"            tasks: {{stuck: {{process_gone: {{engine: '{engine}', min_age: 0s}},\n"  # judged at once
               f"                            no_progress: {{engine: '{engine}', min_age: 0s}}}}}}}}\n"
               f"  celery: {{profile: celery, redis: '{site.redis_url}'}}\n"
               f"  rq: {{profile: rq, redis: '{site.redis_url}'}}\n"
               + "".join(f"  {e}: {{profile: {e}, redis: '{site.redis_url}'{ENGINE_TIMINGS.get(e, '')}}}\n"
                         for e in ("dramatiq", "bullmq", "sidekiq", "arq")))
    books = [edit(book.read_text()) for book in sorted(SHIPPED.glob("*.yml"))]
    return load_setup(str(site.write(*books, systems=systems, sections=sections))), timesketch
