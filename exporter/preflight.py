"""`taskmedic-exporter check --connect`: reach every source and explain every task query."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from typing import Any

from exporter.config import ExporterConfig
from taskmedic.config.model import System, TaskTable, redact
from taskmedic.connections import Connections
from taskmedic.detection.celery_workers import MISSING
from taskmedic.detection.sql import build_live_query, source_sql
from taskmedic.logs import scrub


def seq_scans(plan: Any) -> list[str]:
    """Relations the plan reads with a sequential scan."""
    found: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("Node Type") == "Seq Scan":
            found.append(str(node.get("Relation Name")))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return found


async def preflight(config: ExporterConfig, file: str) -> int:
    problems = 0
    connections = Connections("taskmedic-exporter-check")
    try:
        for name, system in config.systems.items():
            if system.database is not None:
                where = redact(system.database.get_secret_value())
                try:
                    pool = await connections.pg(system.database, system.timezone, system.timeout)
                    async with pool.acquire() as conn:
                        await conn.fetchval("select 1")
                        if system.tasks is not None:
                            q = build_live_query(system.tasks)
                            raw = await conn.fetchval("explain (format json) " + q.sql, *q.params)
                            scans = sorted(set(seq_scans(json.loads(raw))))
                            index = system.tasks.status_column
                            if scans:
                                print(f"{name}: database {where}: reachable; the live query scans "
                                      f"{', '.join(scans)} sequentially: an index on ({index}) keeps its "
                                      "cost bound to live tasks (fine while the table is small)")
                            else:
                                print(f"{name}: database {where}: reachable; live query uses indexes")
                            warning = await zone_warning(conn, system)
                            if warning:
                                print(f"{file}: systems.{name}: warning: {warning}", file=sys.stderr)
                except Exception as e:  # report every unreachable source, not just the first
                    problems += 1
                    print(f"{file}: systems.{name}.database: cannot query {where}: {type(e).__name__}: {scrub(str(e))}",
                          file=sys.stderr)
            if system.redis is not None:
                where = redact(system.redis.get_secret_value())
                try:
                    await connections.redis(system.redis).ping()
                    print(f"{name}: redis {where}: reachable")
                except Exception as e:
                    problems += 1
                    print(f"{file}: systems.{name}.redis: cannot reach {where}: {type(e).__name__}: {scrub(str(e))}",
                          file=sys.stderr)
        problems += check_paths(config, file) + check_celery(config, file)
    finally:
        await connections.close()
    return 1 if problems else 0


def timestamp_columns(tasks: TaskTable) -> set[str]:
    """The columns ages are measured from."""
    return set(tasks.age_columns.values()) | {r.age for r in tasks.stuck.values() if r.age}


async def zone_warning(conn: Any, system: System) -> str | None:
    """Naive timestamp columns read in a server TimeZone that is not UTC, with no `timezone:` set:
    the ages are right only if the application writes local time in that very zone (CAPE writes
    UTC by default), and are otherwise off by the zone's offset."""
    assert system.tasks is not None
    if system.timezone is not None:
        return None
    stmt = await conn.prepare(f"select * from {source_sql(system.tasks)} as src limit 0")
    wanted = timestamp_columns(system.tasks)
    naive = sorted(a.name for a in stmt.get_attributes() if a.name in wanted and a.type.name == "timestamp")
    zone = await conn.fetchval("show timezone")
    if not naive or zone in ("UTC", "Etc/UTC", "GMT", "Etc/GMT", "Zulu", "UCT"):
        return None
    return (f"{', '.join(naive)} {'is' if len(naive) == 1 else 'are'} `timestamp without time zone`, read in the "
            f"server's TimeZone {zone!r}; no `timezone:` is set. If the application writes them in another zone "
            "(CAPE: UTC unless cuckoo.conf says otherwise), ages are off by the difference: set `timezone:` "
            "to the zone they are written in")


def check_celery(config: ExporterConfig, file: str) -> int:
    """A `celery_active` rule asks workers through Celery itself, an optional extra."""
    needing = [f"systems.{n}.tasks.stuck.{r}" for n, s in config.systems.items() if s.tasks is not None
               for r, rule in s.tasks.stuck.items() if rule.celery_active is not None]
    if not needing or importlib.util.find_spec("celery") is not None:
        return 0
    print(f"{file}: {needing[0]}: {MISSING}", file=sys.stderr)
    return 1


def check_paths(config: ExporterConfig, file: str) -> int:
    problems = 0
    for i, disk in enumerate(config.disks):
        if not os.path.exists(disk.path):
            problems += 1
            print(f"{file}: disks[{i}].path: {disk.path} does not exist", file=sys.stderr)
    for label, backup in config.backups.items():
        if not os.path.isdir(backup.path):
            problems += 1
            print(f"{file}: backups.{label}.path: {backup.path} is not a directory", file=sys.stderr)
    return problems
